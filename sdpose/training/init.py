"""Where a training run's weights start: `train.init`.

`scratch` is the official initialisation. A shipped name (`sdpose.models.pretrained`) is
weights made by this project's own pipeline, checked against their checksum. A path is
any sdpose checkpoint (`models/train/best.pt`, a converted official one, a shipped file).
A registry URI (`models:/sdpose-student/3`, `models:/sdpose-student@champion`) is the
weights a registered student was exported from; the `sdpose` commands download it first
(`sdpose.deploy.registry.download_weights`) and hand this module the file.

The weights must fit the configured model: every architecture field but `cycles` (the
cycles share one set of layers, so SDPose weights start a run of any cycle count) must be
equal, and a difference is a parameter error naming `train.init`, the field and both sides,
raised before any service starts. Only a fresh run starts from them; a resumed run
continues from its own checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpose.config import ConfigError, Params
from sdpose.core.paths import resolve
from sdpose.core.presets import ModelConfig
from sdpose.models.checkpoint import CheckpointError, read_checkpoint
from sdpose.models.pretrained import PretrainedError, shipped

SCRATCH = "scratch"
REGISTRY_PREFIX = "models:/"
FREE_FIELDS = ("name", "cycles")  # may differ between the weights and the configured model


class InitError(ConfigError):
    """`train.init` names weights that cannot start this run (exit 2, before any work)."""


@dataclass(frozen=True)
class InitWeights:
    """Resolved `train.init`: the checkpoint file and the architecture it holds."""

    spec: str  # as given in params
    path: Path
    config: dict[str, Any]
    shipped: bool

    def describe(self) -> str:
        return f"shipped weights {self.spec}" if self.shipped else f"checkpoint {self.path}"


def resolve_init(params: Params, workdir: Path) -> InitWeights | None:
    """`train.init` as a checked checkpoint file (None for scratch); raises InitError."""
    spec = params.train.init
    if spec == SCRATCH:
        return None
    if spec.startswith(REGISTRY_PREFIX):
        raise InitError(
            f"train.init: {spec} is a registry URI; the sdpose commands download it before "
            "training (sdpose train, tune, pipeline), a direct call needs the checkpoint path"
        )
    weights = _shipped_weights(spec) or _checkpoint_weights(spec, workdir)
    check_fits(weights, params.model.resolve())
    return weights


def _shipped_weights(spec: str) -> InitWeights | None:
    entry = shipped().get(spec)
    if entry is None:
        return None
    try:
        path = entry.verified_path()
    except PretrainedError as error:
        raise InitError(f"train.init: {error}") from None
    return InitWeights(spec, path, _read_config(spec, path), shipped=True)


def _checkpoint_weights(spec: str, workdir: Path) -> InitWeights:
    path = resolve(workdir, Path(spec))
    if not path.exists():
        known = ", ".join(sorted(shipped())) or "none installed"
        raise InitError(
            f"train.init: {spec!r} is neither 'scratch', a shipped name ({known}), a registry "
            f"URI (models:/...) nor an existing checkpoint file ({path})"
        )
    return InitWeights(spec, path, _read_config(spec, path), shipped=False)


def _read_config(spec: str, path: Path) -> dict[str, Any]:
    try:
        return read_checkpoint(path)["config"]
    except CheckpointError as error:
        raise InitError(f"train.init: {spec}: {error}") from None


def check_fits(weights: InitWeights, model: ModelConfig) -> None:
    """InitError naming each architecture field where the weights and the model differ."""
    ours = model.to_dict()
    differences = [
        f"{field}: the weights have {weights.config.get(field)!r}, the model {value!r}"
        for field, value in ours.items()
        if field not in FREE_FIELDS and weights.config.get(field) != value
    ]
    unknown = sorted(set(weights.config) - set(ours))
    differences += [f"{field}: unknown to this version of sdpose" for field in unknown]
    if differences:
        raise InitError(
            f"train.init: {weights.describe()} ({weights.config.get('name')}) does not fit "
            f"the configured model ({model.name}, model.*):\n  " + "\n  ".join(differences)
        )


def initial_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a worker loads into its freshly built model (the file was checked)."""
    return read_checkpoint(Path(path))["model"]
