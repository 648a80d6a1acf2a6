"""Checkpoints: sdpose's own (self-describing) and conversion of official MMPose ones.

An sdpose checkpoint is a plain dict of tensors and primitives, so it loads with
`torch.load(weights_only=True)` (no pickled code) and rebuilds its model alone:
{"model": state dict, "config": ModelConfig as a dict, "preset": name, ...extras}.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdpose.core.errors import InputError
from sdpose.core.paths import atomic_file
from sdpose.core.presets import ModelConfig, resolve_model_config
from sdpose.models.mct import SDPose


class CheckpointError(InputError):
    """A checkpoint that does not fit the model; the message names the file and the keys."""


def unwrap(model: nn.Module) -> SDPose:
    """The SDPose inside DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while not isinstance(model, SDPose):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected an SDPose model, got {type(model).__name__}")
        model = inner
    return model


def save_checkpoint(path: Path | str, model: nn.Module, **extra: Any) -> Path:
    """Write {model, config, preset, **extra}; extras must be tensors or primitives.

    Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
    """
    model = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    payload = {"model": state, "config": model.config.to_dict(), "preset": model.config.name}
    payload.update(extra)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file to write")
    with atomic_file(path) as partial:
        torch.save(payload, partial)
    return path


def read_checkpoint(path: Path | str) -> dict:
    """An sdpose checkpoint's dict (weights-only loading), checked to hold a model state
    and its config; no model is built."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or not {"model", "config"} <= payload.keys():
        raise CheckpointError(f"{path}: an sdpose checkpoint needs 'model' and 'config' entries")
    if not isinstance(payload["config"], dict):
        raise CheckpointError(f"{path}: config: expected a mapping of architecture fields")
    return payload


def load_checkpoint(path: Path | str) -> tuple[SDPose, dict]:
    """Rebuild the model of an sdpose checkpoint on the CPU; returns (model in eval mode,
    the checkpoint dict with its extras). Move it with `.to(device)`."""
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: config: {error}") from error
    model = SDPose(config)
    _check_keys(path, model, payload["model"])
    model.load_state_dict(payload["model"])
    return model.eval(), payload


def _read(path: Path) -> Any:
    """torch.load with weights_only=True (no pickled code runs); any failure names the file
    and says what it is not, never how to load it unsafely."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code refused by weights_only, or a corrupt file
        raise CheckpointError(f"{path}: {_why_unreadable(path, error)}") from None


# A PyTorch checkpoint is a zip archive (torch >= 1.6) or a pickle (protocol 2+: 0x80).
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def _why_unreadable(path: Path, error: Exception) -> str:
    """What the file is not. torch's own text is not repeated: for a refused pickle it
    advises `weights_only=False`, which runs whatever code an untrusted file holds."""
    with path.open("rb") as file:
        head = file.read(4)
    if not head:
        return "empty file, not a PyTorch checkpoint"
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return "not a PyTorch checkpoint (zip or pickle)"
    if isinstance(error, pickle.UnpicklingError):
        text = str(error)
        name, opcode = re.search(r"GLOBAL ([\w.]+)", text), re.search(r"operand (\d+)", text)
        what = f" (it asks for {name[1]})" if name else ""
        what = what or (f" (pickle opcode {opcode[1]} is not allowed)" if opcode else "")
        return (
            "refused: it holds pickled objects other than tensors and plain values"
            f"{what}; sdpose never runs code from a checkpoint file"
        )
    kind = "zip archive" if head.startswith(_ZIP_MAGIC) else "pickle"
    return f"a {kind} but not a readable PyTorch checkpoint: truncated or corrupt"


_OFFICIAL_HEAD = "keypoint_head.tokenpose."
_OFFICIAL_POS = _OFFICIAL_HEAD + "pos_embedding"
# TokenPose names the shared transformer `transformer`, SDPose `transformer_layer1`; each
# layer is [Residual(PreNorm(Attention)), Residual(PreNorm(FeedForward))].
_OFFICIAL_LAYER = re.compile(r"transformer(?:_layer1)?\.layers\.(\d+)\.(.+)")
_LAYER_PARTS = {
    "0.fn.norm": "attn_norm",
    "0.fn.fn.to_qkv": "attn.qkv",
    "0.fn.fn.to_out.0": "attn.proj",
    "1.fn.norm": "mlp_norm",
    "1.fn.fn.net.0": "mlp.fc1",
    "1.fn.fn.net.3": "mlp.fc2",
}


def map_official_key(key: str) -> str | None:
    """Our name for an official key; None when it has no counterpart."""
    if key.startswith("backbone."):
        return key  # the backbones keep the official module names
    if not key.startswith(_OFFICIAL_HEAD):
        return None
    module, _, tensor = key[len(_OFFICIAL_HEAD) :].rpartition(".")
    layer = _OFFICIAL_LAYER.fullmatch(module)
    if layer and layer[2] in _LAYER_PARTS:
        return f"head.layers.{layer[1]}.{_LAYER_PARTS[layer[2]]}.{tensor}"
    if module == "" and tensor == "keypoint_token":
        return "head.keypoint_token"
    if module == "patch_to_embedding":
        return f"head.patch_embed.{tensor}"
    if re.fullmatch(r"mlp_head\.\d", module):  # same Sequential: LN, Linear[, LN, Linear]
        return f"head.heatmap_head.{module[-1]}.{tensor}"
    return None


def convert_official_checkpoint(src: Path | str, dst: Path | str, preset: str) -> dict:
    """An official MMPose SDPose/TokenPose checkpoint -> an sdpose checkpoint of `preset`.

    Accepts {"state_dict": ...} or a bare state dict. Every official key must map onto the
    preset's model and every model key must be filled, with matching shapes; otherwise a
    CheckpointError lists the offending keys. The fixed sine embedding is checked, not kept.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_dir():  # checked first: the conversion takes a while and would be lost
        raise CheckpointError(
            f"{dst}: is a directory; give the file to write, for example {dst / (preset + '.pt')}"
        )
    payload = _read(src)
    official = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(official, dict) or not all(torch.is_tensor(v) for v in official.values()):
        raise CheckpointError(f"{src}: expected a state dict of tensors (or {{'state_dict': ...}})")
    model = SDPose(resolve_model_config(preset))
    official = {key.removeprefix("module."): tensor for key, tensor in official.items()}
    stored_pos = official.pop(_OFFICIAL_POS, None)
    state, unexpected, names = {}, [], {}
    for key, tensor in official.items():
        ours = map_official_key(key)
        if ours is None:
            unexpected.append(key)
        else:
            state[ours], names[ours] = tensor, key
    expected_pos = model.head.pos_embedding
    misshaped = []
    if stored_pos is not None and stored_pos.shape != expected_pos.shape:
        misshaped.append(_shape_problem(_OFFICIAL_POS, stored_pos, expected_pos))
    _check_keys(src, model, state, unexpected, misshaped, names)
    # Not a weight (it never trains), but a different one would silently change the model.
    # A float16 copy of the float32 embedding is off by at most ~5e-4.
    if stored_pos is not None and not torch.allclose(stored_pos.float(), expected_pos, atol=1e-3):
        raise CheckpointError(f"{src}: {_OFFICIAL_POS} is not the fixed 2-D sine embedding")
    model.load_state_dict(state)  # casts float16 weights to the model's float32
    save_checkpoint(dst, model, source=str(src))
    return {"preset": preset, "source": str(src), "checkpoint": str(dst), "tensors": len(state)}


def _shape_problem(key: str, stored: torch.Tensor, expected: torch.Tensor) -> str:
    return f"{key}: checkpoint {tuple(stored.shape)}, model {tuple(expected.shape)}"


def _check_keys(
    path: Path,
    model: nn.Module,
    state: dict[str, torch.Tensor],
    unexpected: Sequence[str] = (),
    misshaped: Sequence[str] = (),
    names: dict[str, str] | None = None,
) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key.

    `names` maps our keys back to the checkpoint's own, so the user sees the names in
    their file.
    """
    names = names or {}

    def label(key: str) -> str:
        return f"{names[key]} (ours: {key})" if names.get(key, key) != key else key

    expected = model.state_dict()
    unexpected = [*unexpected, *(label(key) for key in state if key not in expected)]
    missing = [key for key in expected if key not in state]
    misshaped = [
        *misshaped,
        *(
            _shape_problem(label(key), state[key], tensor)
            for key, tensor in expected.items()
            if key in state and state[key].shape != tensor.shape
        ),
    ]
    problems = [
        (title, keys)
        for title, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if keys
    ]
    if problems:
        name = getattr(getattr(model, "config", None), "name", "?")
        lines = [f"{path}: checkpoint does not fit preset {name}:"]
        for title, keys in problems:
            lines.append(f"  {title} keys ({len(keys)}):")
            lines += [f"    {key}" for key in keys]
        raise CheckpointError("\n".join(lines))
