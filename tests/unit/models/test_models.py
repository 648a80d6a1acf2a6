"""Model behaviour over the whole zoo: shapes per cycle, cycle counts, sharing, cost."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdpose.models import PRESETS, CycleOutput, build_model, resolve_model_config
from sdpose.models.cost import count_macs, model_info

pytestmark = pytest.mark.unit


def _images(batch: int, size: tuple[int, int] = PRESETS["sdpose-nano"].input_size) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_forward_backward_every_preset(preset):
    torch.manual_seed(0)
    model = build_model(preset).train()
    config = model.config
    batch = 2 if "nano" in preset else 1  # the paper sizes at batch 1 keep the suite fast
    outputs = model(_images(batch, config.input_size))
    assert len(outputs) == config.cycles
    patches = config.num_patches
    for output in outputs:
        assert isinstance(output, CycleOutput)
        assert output.predictions.shape == (batch, 17, *config.output_shape)
        assert output.keypoint_tokens.shape == (batch, 17, config.dim)
        assert output.visual_tokens.shape == (batch, patches, config.dim)
    loss = sum(output.predictions.square().mean() for output in outputs)
    loss = loss + sum(output.visual_tokens.square().mean() for output in outputs)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.head.keypoint_token.grad.abs().sum() > 0
    assert model.head.patch_embed.weight.grad.abs().sum() > 0


def test_the_simcc_head_predicts_x_then_y_bins_on_every_cycle():
    torch.manual_seed(0)
    model = build_model("sdpose-nano", head="simcc", simcc_split=3).train()
    config = model.config
    assert config.simcc_bins == (96 * 3, 128 * 3) and config.output_shape == (672,)
    assert not hasattr(model.head, "heatmap_head")
    outputs = model(_images(2, config.input_size))
    assert [tuple(o.predictions.shape) for o in outputs] == [(2, 17, 672)] * config.cycles
    sum(o.predictions.square().mean() for o in outputs).backward()
    assert model.head.simcc_head.classifier.weight.grad.abs().sum() > 0
    heatmap = build_model("sdpose-nano", head="heatmap")
    # the head is the only difference: the SimCC classifier is smaller than the heatmap MLP
    head_params = sum(p.numel() for p in model.head.simcc_head.parameters())
    assert sum(p.numel() for p in model.parameters()) - head_params == sum(
        p.numel() for p in heatmap.parameters()
    ) - sum(p.numel() for p in heatmap.head.heatmap_head.parameters())


def test_eval_runs_exactly_one_cycle_and_train_runs_all():
    model = build_model("sdpose-nano")
    images = _images(1)
    with torch.no_grad():
        assert len(model.train()(images)) == model.config.cycles == 2
        (student,) = model.eval()(images)
        all_cycles = model(images, cycles=model.config.cycles)
    # the eval forward is the first cycle of the training forward, nothing less or more
    torch.testing.assert_close(student.predictions, all_cycles[0].predictions, rtol=0, atol=0)
    assert (all_cycles[1].predictions - student.predictions).abs().max() > 1e-6


@pytest.mark.parametrize("cycles", [1, 3, 4])
def test_explicit_cycles_run_that_many_in_both_modes(cycles):
    model = build_model("sdpose-nano")
    with torch.no_grad():
        for mode in (True, False):
            outputs = model.train(mode)(_images(1), cycles=cycles)
            assert len(outputs) == cycles
            assert all(o.predictions.shape == (1, 17, *model.config.output_shape) for o in outputs)
            assert all(torch.isfinite(o.predictions).all() for o in outputs)


def test_invalid_cycles_are_refused():
    model = build_model("sdpose-nano")
    for cycles in (0, -1, 1.5):
        with pytest.raises(ValueError, match="cycles"):
            model(_images(1), cycles=cycles)


def test_the_first_cycle_does_not_depend_on_how_many_follow():
    model = build_model("sdpose-nano").eval()
    with torch.no_grad():
        one = model(_images(2), cycles=1)[0]
        first_of_three = model(_images(2), cycles=3)[0]
    torch.testing.assert_close(one.predictions, first_of_three.predictions, rtol=0, atol=0)


def test_a_cycle_continues_from_all_tokens_of_the_previous_one():
    model = build_model("sdpose-nano").eval()
    with torch.no_grad():
        first, second = model(_images(2), cycles=2)
        tokens = torch.cat((first.keypoint_tokens, first.visual_tokens), dim=1)
        again = model.head.readout(model.head.run_layers(tokens))
    torch.testing.assert_close(again.predictions, second.predictions)
    assert (second.predictions - first.predictions).abs().max() > 1e-6  # cycles do differ


def test_layers_are_shared_across_cycles():
    counts = {}
    for cycles in (1, 2, 5):
        model = build_model("sdpose-t", cycles=cycles)
        counts[cycles] = sum(p.numel() for p in model.parameters())
        assert len(model.head.layers) == model.config.depth == 6
    assert counts[1] == counts[2] == counts[5]


@pytest.mark.parametrize("preset", [name for name in PRESETS if name.startswith("sdpose-")])
def test_student_inference_costs_one_cycle(preset):
    """The default eval forward of a multi-cycle model costs exactly a one-cycle model."""
    config = PRESETS[preset]
    one_cycle = dataclasses.replace(config, cycles=1)
    with torch.device("meta"):
        model = build_model(config).eval()
        images = torch.empty(1, 3, *config.input_size)
    default_macs = count_macs(model, images, cycles=None)
    assert default_macs == round(model_info(one_cycle)["gflops"] * 1e9)
    all_cycles = count_macs(model, images, cycles=config.cycles)
    assert all_cycles > default_macs


def test_eval_forward_is_deterministic_and_batch_independent():
    model = build_model("sdpose-nano").eval()
    images = _images(3)
    with torch.no_grad():
        batched = model(images)[0].predictions
        single = model(images[1:2])[0].predictions
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-6)


def test_config_is_exposed_and_overrides_build():
    model = build_model("sdpose-t", dim=96, heads=4, depth=2, cycles=2)
    assert model.config == resolve_model_config("sdpose-t", dim=96, heads=4, depth=2, cycles=2)
    assert model.head.patch_embed.out_features == 96
    with pytest.raises(ValueError, match="dim: 100 must be divisible by heads"):
        build_model("sdpose-t", dim=100)


def test_traces_without_data_dependent_control_flow():
    """torch.export (what the ONNX exporter builds on) captures the one-cycle student."""
    model = build_model("tokenpose-nano").eval()
    exported = torch.export.export(model, (_images(1),), strict=False)
    with torch.no_grad():
        expected = model(_images(1))[0].predictions
        got = exported.module()(_images(1))[0].predictions
    torch.testing.assert_close(got, expected)
