"""The SDPose / TokenPose model zoo: `build_model("sdpose-t")` and friends.

The presets themselves are plain data in `sdpose.core.presets` (parameter validation and
the data stages read them without the network code); this package builds the networks.
"""

from __future__ import annotations

from sdpose.core.presets import PRESETS, ModelConfig, resolve_model_config
from sdpose.models.mct import SDPose
from sdpose.models.outputs import CycleOutput

__all__ = ["PRESETS", "CycleOutput", "ModelConfig", "SDPose", "build_model", "resolve_model_config"]


def build_model(preset_or_config: str | ModelConfig, **overrides: int) -> SDPose:
    """A freshly initialised model; `overrides` (cycles, dim, depth, heads) apply to presets."""
    if isinstance(preset_or_config, ModelConfig):
        if overrides:
            raise ValueError("overrides apply to a preset name, not to a ModelConfig")
        return SDPose(preset_or_config)
    return SDPose(resolve_model_config(preset_or_config, **overrides))
