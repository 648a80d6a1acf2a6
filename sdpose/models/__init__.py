"""The SDPose / TokenPose model zoo: `build_model("sdpose-t")` and friends.

Torch is imported lazily: `sdpose.config` validates `model.*` parameters through
`sdpose.models.presets`, and importing that must not pull in the network code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdpose.models.presets import PRESETS, ModelConfig, resolve_model_config

if TYPE_CHECKING:
    from sdpose.models.mct import SDPose
    from sdpose.models.outputs import CycleOutput

__all__ = ["PRESETS", "CycleOutput", "ModelConfig", "SDPose", "build_model", "resolve_model_config"]


def build_model(preset_or_config: str | ModelConfig, **overrides: int) -> SDPose:
    """A freshly initialised model; `overrides` (cycles, dim, depth, heads) apply to presets."""
    from sdpose.models.mct import SDPose

    if isinstance(preset_or_config, ModelConfig):
        if overrides:
            raise ValueError("overrides apply to a preset name, not to a ModelConfig")
        return SDPose(preset_or_config)
    return SDPose(resolve_model_config(preset_or_config, **overrides))


def __getattr__(name: str) -> Any:
    if name == "SDPose":
        from sdpose.models.mct import SDPose

        return SDPose
    if name == "CycleOutput":
        from sdpose.models.outputs import CycleOutput

        return CycleOutput
    raise AttributeError(f"module 'sdpose.models' has no attribute {name!r}")
