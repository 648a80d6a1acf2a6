"""The model zoo as plain data: one `ModelConfig` per preset, timm style.

Torch-free on purpose: `sdpose.config` imports this module while validating params.yaml,
and parameter validation must stay cheap. The paper presets read 3x256x192 crops and predict
17x64x48 heatmaps (the official numbers each reproduces are pinned in
tests/unit/models/test_presets_cost.py); the nano presets, sized for CPU training, read 128x96 and
predict 32x24. The sizes live here and nowhere else: the codec, the crops, the feed, the
evaluation, the export and predict all take them from the model's config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKBONES = ("stem", "hrnet_w32", "none")
POS_EMBEDDINGS = ("sine-full", "sine")
HEADS = ("heatmap", "simcc")  # sdpose.models.heads builds them
OVERRIDABLE = (
    "cycles",
    "dim",
    "depth",
    "heads",
    "input_size",
    "heatmap_size",
    "head",
    "simcc_split",
)


@dataclass(frozen=True)
class ModelConfig:
    """The whole architecture of an SDPose / TokenPose model.

    `backbone` is 'stem' (StemNet: two stride-2 convs and a bottleneck layer), 'hrnet_w32'
    (the first three HRNet-W32 stages, highest-resolution branch out) or 'none' (the head
    cuts the image itself into patches, as the original TokenPose-T does).
    """

    name: str
    backbone: str = "stem"
    stem_channels: int = 64  # width of the two stride-2 stem convs
    stem_planes: int = 64  # bottleneck width; the stem outputs 4x this many channels
    stem_blocks: int = 4
    patch_size: tuple[int, int] = (4, 3)  # (h, w) on the feature map
    dim: int = 192
    depth: int = 6
    heads: int = 8
    mlp_ratio: int = 3
    cycles: int = 1
    num_keypoints: int = 17
    input_size: tuple[int, int] = (256, 192)  # (h, w)
    heatmap_size: tuple[int, int] = (64, 48)  # (h, w)
    pos_embedding: str = "sine-full"  # 'sine-full' re-adds it before every layer
    heatmap_hidden_dim: int | None = None  # None: the official rule, see `heatmap_hidden`
    head: str = "heatmap"  # 'heatmap' (TokenPose, the paper) or 'simcc' (x and y bins)
    simcc_split: int = 2  # SimCC bins per input pixel

    def __post_init__(self) -> None:
        problem = _first_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def in_channels(self) -> int:
        """Channels of the feature map the transformer head cuts into patches."""
        return {"stem": 4 * self.stem_planes, "hrnet_w32": 32, "none": 3}[self.backbone]

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of that feature map: the CNN backbones downsample by 4."""
        stride = 1 if self.backbone == "none" else 4
        return (self.input_size[0] // stride, self.input_size[1] // stride)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return (
            self.feature_size[0] // self.patch_size[0],
            self.feature_size[1] // self.patch_size[1],
        )

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size[0] * self.patch_size[1]

    @property
    def stride(self) -> int:
        """Input pixels per heatmap pixel (the same on both axes; `_first_problem` checks)."""
        return self.input_size[0] // self.heatmap_size[0]

    @property
    def simcc_bins(self) -> tuple[int, int]:
        """(x bins, y bins) of the SimCC head: `simcc_split` per input pixel."""
        return (self.input_size[1] * self.simcc_split, self.input_size[0] * self.simcc_split)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """What the head predicts per keypoint: (H, W) heatmaps or (Wx + Hy,) SimCC logits."""
        if self.head == "simcc":
            return (sum(self.simcc_bins),)
        return tuple(self.heatmap_size)

    @property
    def heatmap_hidden(self) -> int:
        """Hidden width of the heatmap MLP; 0 means a single linear layer.

        The official rule: hidden = H*W/8, used only while dim <= hidden/2.
        """
        if self.heatmap_hidden_dim is not None:
            return self.heatmap_hidden_dim
        hidden = self.heatmap_size[0] * self.heatmap_size[1] // 8
        return hidden if self.dim <= hidden // 2 else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/`weights_only`-safe values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown model config field; known: {sorted(known)}")
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items()
            }
        )


def _first_problem(config: ModelConfig) -> str | None:
    """The first broken rule as "field: rule" (config.py turns it into model.field)."""
    if config.backbone not in BACKBONES:
        return f"backbone: {config.backbone!r} is not one of {', '.join(BACKBONES)}"
    if config.pos_embedding not in POS_EMBEDDINGS:
        return f"pos_embedding: {config.pos_embedding!r} is not one of {', '.join(POS_EMBEDDINGS)}"
    if config.head not in HEADS:
        return f"head: {config.head!r} is not one of {', '.join(HEADS)}"
    positive = (
        "stem_channels",
        "stem_planes",
        "stem_blocks",
        "dim",
        "depth",
        "heads",
        "simcc_split",
    )
    for field in (*positive, "mlp_ratio", "cycles", "num_keypoints"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{field}: {value!r} must be a positive integer"
    if config.dim % config.heads:
        return f"dim: {config.dim} must be divisible by heads ({config.heads})"
    if config.dim % 4:
        # The sine embedding splits dim into y and x halves of interleaved sin/cos pairs.
        return f"dim: {config.dim} must be divisible by 4 (sine position embedding)"
    for field in ("input_size", "heatmap_size"):
        size = getattr(config, field)
        if len(size) != 2 or any(
            not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in size
        ):
            return f"{field}: {list(size)} must be [height, width], two positive integers"
    if config.backbone != "none" and any(size % 4 for size in config.input_size):
        return f"input_size: {list(config.input_size)} must be divisible by 4 (the CNN stride)"
    (in_h, in_w), (hm_h, hm_w) = config.input_size, config.heatmap_size
    if in_w * 4 != in_h * 3:  # BOX_ASPECT, in integers
        return (
            f"input_size: {list(config.input_size)} must be [height, width] with width / height"
            f" = 3 / 4, the aspect of the prepared person boxes (e.g. [256, 192], [128, 96])"
        )
    if in_h % hm_h or in_w % hm_w or in_h // hm_h != in_w // hm_w:
        return (
            f"heatmap_size: {list(config.heatmap_size)} must divide input_size "
            f"{list(config.input_size)} by one integer stride on both axes (e.g. 4)"
        )
    feature, patch = config.feature_size, config.patch_size
    if any(size % step for size, step in zip(feature, patch, strict=True)):
        return f"patch_size: {list(patch)} must divide the feature map {list(feature)}"
    if config.heatmap_hidden_dim is not None and config.heatmap_hidden_dim < 0:
        return f"heatmap_hidden_dim: {config.heatmap_hidden_dim} must be >= 0 (0: one linear layer)"
    return None


_S = {"depth": 12}  # the S architectures: the T transformer made twice as deep
# A slim StemNet (16 wide, 2 bottlenecks, 64 channels out) and a 4-layer, 64-dim transformer
# on 128x96 crops (the 32x24 feature map cut into 4x3 patches: 64 visual tokens), with the
# SimCC head (2 bins per input pixel): on two CPU cores it fits 32 fixed crops to the pixel
# in 160 steps where the heatmap head's 32x24 maps are still flat (docs/training.md, which
# also has the learning curves); `model.head: heatmap` gives TokenPose's head back.
_NANO = {
    "head": "simcc",
    "stem_channels": 16,
    "stem_planes": 16,
    "stem_blocks": 2,
    "dim": 64,
    "depth": 4,
    "heads": 4,
    "input_size": (128, 96),
    "heatmap_size": (32, 24),
}

PRESETS: dict[str, ModelConfig] = {
    # SDPose (paper Table 1): shared layers run `cycles` times in training, once at inference.
    "sdpose-t": ModelConfig("sdpose-t", depth=6, cycles=3),
    "sdpose-s-v1": ModelConfig("sdpose-s-v1", **_S, cycles=2),
    "sdpose-s-v2": ModelConfig("sdpose-s-v2", **_S, patch_size=(2, 2), cycles=2),
    "sdpose-b": ModelConfig("sdpose-b", backbone="hrnet_w32", **_S, cycles=2),
    # TokenPose baselines: the same heads with one cycle; T has no CNN at all.
    "tokenpose-t": ModelConfig(
        "tokenpose-t", backbone="none", patch_size=(16, 12), depth=12, heads=16
    ),
    "tokenpose-s-v1": ModelConfig("tokenpose-s-v1", **_S),
    "tokenpose-s-v2": ModelConfig("tokenpose-s-v2", **_S, patch_size=(2, 2)),
    # Small enough to train on two CPU cores in minutes (the params.yaml default).
    "sdpose-nano": ModelConfig("sdpose-nano", **_NANO, cycles=2),
    "tokenpose-nano": ModelConfig("tokenpose-nano", **_NANO),
}


def resolve_model_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset with any of OVERRIDABLE replaced, checked as a whole.

    Raises ValueError("field: rule"), e.g. "dim: 100 must be divisible by heads (8)".
    """
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    for field in overrides:
        if field not in OVERRIDABLE:
            allowed = ", ".join(OVERRIDABLE)
            raise ValueError(f"{field}: cannot override this field; allowed: {allowed}")
    preset = PRESETS[name]
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in overrides.items()
        if value is not None
    }
    if "input_size" in values and "heatmap_size" not in values:
        # A new input size keeps the preset's stride: the heatmap follows the input.
        values["heatmap_size"] = tuple(
            size // preset.stride if isinstance(size, int) else size
            for size in values["input_size"]
        )
    return dataclasses.replace(preset, **values)
