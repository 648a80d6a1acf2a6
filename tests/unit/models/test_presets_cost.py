"""Presets reproduce the official architectures: parameter and multiply-add counts.

The expected numbers were measured on the official code (issue "Foundation and the SDPose
model zoo"); they are not taken from this implementation's output.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from sdpose.core.presets import PRESETS, ModelConfig, resolve_model_config
from sdpose.models.cost import model_info, model_info_table

pytestmark = pytest.mark.unit

# preset: (trainable params, GMAC of one inference forward, GMAC added by each extra cycle)
OFFICIAL = {
    "sdpose-t": (4_398_528, 1.799, 0.627),
    "sdpose-s-v1": (6_620_736, 2.404, 1.232),
    "sdpose-s-v2": (6_227_520, 4.674, 3.501),
    "sdpose-b": (13_145_984, 5.164, 1.232),
    "tokenpose-s-v1": (6_620_736, 2.404, None),
    "tokenpose-s-v2": (6_227_520, 4.674, None),
    "tokenpose-t": (5_816_448, 1.260, None),
}
OFFICIAL_CYCLES = {"sdpose-t": 3, "sdpose-s-v1": 2, "sdpose-s-v2": 2, "sdpose-b": 2}


@pytest.fixture(scope="module")
def table() -> dict[str, dict]:
    return {row["preset"]: row for row in model_info_table()}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_matches_the_official_counts(table, preset):
    params, gmac, per_cycle = OFFICIAL[preset]
    row = table[preset]
    assert row["params"] == pytest.approx(params, rel=0.005)
    assert row["gflops"] == pytest.approx(gmac, rel=0.005)
    if per_cycle is not None:
        extra = row["gflops_train"] - row["gflops"]
        assert row["cycles"] == OFFICIAL_CYCLES[preset]
        assert extra == pytest.approx(per_cycle * (row["cycles"] - 1), rel=0.005)


def test_params_are_exact_for_the_paper_models(table):
    for preset, (params, _, _) in OFFICIAL.items():
        assert table[preset]["params"] == params, preset


def test_one_cycle_costs_one_transformer_pass_by_hand():
    """The extra cycle of SDPose-T, from the mmcv hook formulas written out by hand."""
    dim, depth, mlp, keypoints, patches, hidden, pixels = 192, 6, 576, 17, 256, 384, 64 * 48
    tokens = keypoints + patches
    layer = tokens * (2 * dim + dim * 3 * dim + dim * dim + 2 * dim + dim * mlp + mlp * dim)
    heatmap_head = keypoints * (2 * dim + dim * hidden + 2 * hidden + hidden * pixels)
    row = model_info("sdpose-t")
    extra_macs = (row["gflops_train"] - row["gflops"]) * 1e9 / 2
    assert extra_macs == pytest.approx(depth * layer + heatmap_head, abs=1)


def test_attention_products_are_reported_beside(table):
    row = table["sdpose-t"]
    tokens, dim, depth = 17 + 256, 192, 6
    attention = 2 * tokens * tokens * dim * depth
    assert (row["gflops_with_attention"] - row["gflops"]) * 1e9 == pytest.approx(attention, abs=1)


def test_fixed_sine_embedding_is_not_trainable(table):
    row = table["sdpose-t"]
    assert row["params_total"] - row["params"] == 256 * 192  # the official parameters() count


def test_twins_share_the_architecture():
    for twin, student in [
        ("tokenpose-s-v1", "sdpose-s-v1"),
        ("tokenpose-s-v2", "sdpose-s-v2"),
        ("tokenpose-nano", "sdpose-nano"),
    ]:
        a, b = PRESETS[twin], PRESETS[student]
        assert a.cycles == 1 and b.cycles > 1
        assert dataclasses.replace(a, name="x", cycles=1) == dataclasses.replace(
            b, name="x", cycles=1
        )


def test_paper_presets_read_256x192_and_nano_128x96():
    for name, config in PRESETS.items():
        cpu_sized = name.endswith("-nano")
        assert config.input_size == ((128, 96) if cpu_sized else (256, 192))
        assert config.heatmap_size == ((32, 24) if cpu_sized else (64, 48))
        assert config.num_keypoints == 17 and config.stride == 4


def test_input_size_override_keeps_the_stride_and_is_checked():
    config = resolve_model_config("sdpose-nano", input_size=[256, 192])
    assert (config.input_size, config.heatmap_size) == ((256, 192), (64, 48))
    assert config.patch_grid == (16, 16)
    explicit = resolve_model_config("sdpose-t", input_size=(128, 96), heatmap_size=(64, 48))
    assert explicit.stride == 2
    for bad, field in [
        ({"input_size": [128, 128]}, "input_size"),  # not the boxes' 3:4 aspect
        ({"input_size": [130, 97]}, "input_size"),  # not a multiple of the CNN stride
        ({"input_size": [128, 96], "heatmap_size": [32, 20]}, "heatmap_size"),
        ({"input_size": [128, 96], "heatmap_size": [48, 24]}, "heatmap_size"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            resolve_model_config("sdpose-nano", **bad)


def test_nano_is_cheap(table):
    row = table["sdpose-nano"]
    assert row["gflops"] <= 0.25
    assert row["gflops_train"] < table["sdpose-t"]["gflops"] / 4


def test_overrides_apply_and_keep_the_rest():
    config = resolve_model_config("sdpose-t", cycles=4, dim=256, depth=3, heads=4)
    assert (config.cycles, config.dim, config.depth, config.heads) == (4, 256, 3, 4)
    assert config.patch_size == PRESETS["sdpose-t"].patch_size
    assert resolve_model_config("sdpose-t", cycles=None) == PRESETS["sdpose-t"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 100}, "dim: 100 must be divisible by heads (8)"),
        ({"dim": 70, "heads": 2}, "dim: 70 must be divisible by 4"),  # sine y/x halves
        ({"cycles": 0}, "cycles: 0 must be a positive integer"),
        ({"depth": -1}, "depth: -1 must be a positive integer"),
        ({"mlp_ratio": 2}, "mlp_ratio: cannot override"),
    ],
)
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ValueError) as error:
        resolve_model_config("sdpose-t", **overrides)
    assert str(error.value).startswith(message)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'foo'; known: sdpose-t, "):
        resolve_model_config("foo")


def test_config_round_trips_through_plain_values():
    config = resolve_model_config("sdpose-s-v2", cycles=3)
    plain = config.to_dict()
    assert plain["patch_size"] == [2, 2]
    assert ModelConfig.from_dict(plain) == config
    with pytest.raises(ValueError, match="^colour: unknown"):
        ModelConfig.from_dict({**plain, "colour": "red"})


def test_official_heatmap_head_rule():
    # hidden = 64*48/8 = 384, used while dim <= 192; a wider token gets one linear layer.
    assert PRESETS["sdpose-t"].heatmap_hidden == 384
    assert resolve_model_config("sdpose-t", dim=256).heatmap_hidden == 0


def test_presets_module_does_not_import_torch():
    code = "import sys, sdpose.core.presets; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
