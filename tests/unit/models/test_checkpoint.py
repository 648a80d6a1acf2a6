"""Official-checkpoint conversion (key mapping, error listing) and sdpose save/load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from shared import REFERENCE

from sdpose.models import build_model
from sdpose.models.checkpoint import (
    CheckpointError,
    convert_official_checkpoint,
    load_checkpoint,
    map_official_key,
    save_checkpoint,
)
from sdpose.models.mct import sine_position_embedding

pytestmark = pytest.mark.unit

KEY_LIST = REFERENCE / "sdpose_t_state_dict_keys.txt"
POS_KEY = "keypoint_head.tokenpose.pos_embedding"


@pytest.fixture
def official_state() -> dict[str, torch.Tensor]:
    """Zero tensors shaped like the official SDPose-T state dict (sine embedding filled in)."""
    if not KEY_LIST.exists():
        pytest.skip(f"reference key list not found at {KEY_LIST}")
    state = {}
    for line in KEY_LIST.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float16
        state[key] = torch.zeros(dims, dtype=dtype)
    state[POS_KEY] = sine_position_embedding((16, 16), 192)
    return state


def _convert(tmp_path: Path, payload) -> dict:
    source = tmp_path / "official.pth"
    torch.save(payload, source)
    return convert_official_checkpoint(source, tmp_path / "ours.pt", "sdpose-t")


def test_reference_key_list_maps_one_to_one(tmp_path, official_state):
    assert len(official_state) == 168
    summary = _convert(tmp_path, {"state_dict": official_state, "meta": {}})
    assert summary["tensors"] == 167  # all but the fixed sine embedding
    model, payload = load_checkpoint(tmp_path / "ours.pt")
    assert payload["preset"] == "sdpose-t"
    assert all(torch.count_nonzero(t) == 0 for t in model.state_dict().values())
    # the backbone keeps the official names
    assert set(payload["model"]) >= {k for k in official_state if k.startswith("backbone.")}


def test_values_land_on_the_right_tensors(tmp_path, official_state):
    official_state["keypoint_head.tokenpose.transformer_layer1.layers.3.1.fn.fn.net.3.bias"] += 7
    official_state["keypoint_head.tokenpose.mlp_head.2.weight"] += 5
    _convert(tmp_path, official_state)  # a bare state dict is accepted too
    model, _ = load_checkpoint(tmp_path / "ours.pt")
    assert torch.all(model.head.layers[3].mlp.fc2.bias == 7)
    assert torch.all(model.head.heatmap_head[2].weight == 5)
    assert torch.count_nonzero(model.head.layers[2].mlp.fc2.bias) == 0


def test_tokenpose_naming_maps_too():
    official = "keypoint_head.tokenpose.transformer.layers.11.0.fn.fn.to_qkv.weight"
    assert map_official_key(official) == "head.layers.11.attn.qkv.weight"
    assert map_official_key("keypoint_head.loss.weight") is None


def test_missing_unexpected_and_misshaped_keys_are_all_listed(tmp_path, official_state):
    missing = "keypoint_head.tokenpose.transformer_layer1.layers.5.0.fn.fn.to_out.0.bias"
    del official_state[missing]
    official_state["keypoint_head.tokenpose.extra_head.weight"] = torch.zeros(3)
    official_state["backbone.layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(CheckpointError) as error:
        _convert(tmp_path, official_state)
    message = str(error.value)
    assert "official.pth" in message and "sdpose-t" in message
    assert "missing keys (1)" in message and "head.layers.5.attn.proj.bias" in message
    assert "unexpected keys (1)" in message and "extra_head.weight" in message
    assert "mis-shaped keys (1)" in message
    assert (
        "backbone.layer1.0.conv1.weight: checkpoint (64, 64, 3, 3), model (64, 64, 1, 1)" in message
    )
    assert not (tmp_path / "ours.pt").exists()


def test_wrong_preset_lists_every_problem_by_the_files_own_names(tmp_path, official_state):
    source = tmp_path / "official.pth"
    torch.save(official_state, source)
    with pytest.raises(CheckpointError) as error:
        convert_official_checkpoint(source, tmp_path / "ours.pt", "sdpose-s-v2")
    message = str(error.value)
    # S-V2: 2x2 patches (768 of them, 1024 values each) and 12 layers instead of 6
    assert f"{POS_KEY}: checkpoint (1, 256, 192), model (1, 768, 192)" in message
    official_patch = "keypoint_head.tokenpose.patch_to_embedding.weight"
    assert f"{official_patch} (ours: head.patch_embed.weight): checkpoint (192, 3072)" in message
    # 6 missing layers x 11 tensors (2 norms x 2, qkv weight, proj, fc1, fc2 x 2)
    assert "missing keys (66)" in message and "head.layers.11.mlp.fc2.bias" in message


def test_a_non_sine_position_embedding_is_refused(tmp_path, official_state):
    official_state[POS_KEY] = torch.zeros(1, 256, 192)
    with pytest.raises(CheckpointError, match="pos_embedding is not the fixed 2-D sine embedding"):
        _convert(tmp_path, official_state)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("sdpose-nano", cycles=3).eval()
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, epoch=4, best_ap=0.5)
    raw = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert raw["config"]["cycles"] == 3 and raw["epoch"] == 4
    loaded, payload = load_checkpoint(path)
    assert loaded.config == model.config
    assert payload["best_ap"] == 0.5 and payload["preset"] == "sdpose-nano"
    images = torch.randn(1, 3, *model.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, cycles=3), model(images, cycles=3))


def test_load_refuses_pickled_objects_and_foreign_files(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "hook": Path("/")}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="'model' and 'config'"):
        load_checkpoint(path)


def test_missing_source_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth: no such checkpoint file"):
        convert_official_checkpoint(tmp_path / "nothing.pth", tmp_path / "out.pt", "sdpose-t")
