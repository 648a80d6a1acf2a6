"""The keypoint heads: what a keypoint token becomes, a heatmap or a pair of SimCC vectors.

Both read each keypoint token alone, on every cycle (SDPose's heads are per cycle and the
token distillation is between tokens, so either head distils the same way). The output
is one tensor per cycle, (N, K, *output_shape), that the head's codec encodes targets for
and decodes (`sdpose.core.codec.HeatmapCodec`, `sdpose.core.simcc.SimCCCodec`); the loss
of each head is in `sdpose.training.losses`.

Shapes: N batch, K keypoints, D embedding dim, H x W heatmap, Wx + Hy SimCC bins.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("heatmap", "simcc")


class HeatmapHead(nn.Sequential):
    """Keypoint token -> heatmap (N, K, H, W): LN, Linear[, LN, Linear], as TokenPose.

    A Sequential with the official layout (`0` LN, `1` Linear, ...), so official
    checkpoints load into `head.heatmap_head.*` unchanged.
    """

    def __init__(self, dim: int, hidden: int, heatmap_size: tuple[int, int]) -> None:
        pixels = heatmap_size[0] * heatmap_size[1]
        if hidden == 0:
            layers = [nn.LayerNorm(dim), nn.Linear(dim, pixels)]
        else:
            layers = [nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.LayerNorm(hidden)]
            layers.append(nn.Linear(hidden, pixels))
        super().__init__(*layers)
        self.heatmap_size = tuple(heatmap_size)

    def forward(self, keypoint_tokens: torch.Tensor) -> torch.Tensor:
        flat = super().forward(keypoint_tokens)
        return flat.reshape(*keypoint_tokens.shape[:2], *self.heatmap_size)


class SimCCHead(nn.Module):
    """Keypoint token -> SimCC logits (N, K, Wx + Hy): LN, then one Linear per axis.

    The two axes' classifiers are one Linear over the concatenated bins (the same weights
    as SimCC's two, one matrix product instead of two).
    """

    def __init__(self, dim: int, bins: tuple[int, int]) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, sum(self.bins))

    def forward(self, keypoint_tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(keypoint_tokens))


def build_head(config) -> nn.Module:  # config: ModelConfig
    """The configured head for `config.dim`-wide keypoint tokens."""
    if config.head == "simcc":
        return SimCCHead(config.dim, config.simcc_bins)
    return HeatmapHead(config.dim, config.heatmap_hidden, config.heatmap_size)
