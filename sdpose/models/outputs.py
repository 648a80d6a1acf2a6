"""The per-cycle output of the Multi-Cycled Transformer.

Kept in its own module so losses, training and export can depend on the output contract
without importing the network code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class CycleOutput(NamedTuple):
    """What one pass ("cycle") through the shared transformer layers produces.

    `predictions` is the keypoint head's output, (N, K, H, W) heatmaps or (N, K, Wx + Hy)
    SimCC logits (`ModelConfig.output_shape`).

    Shapes: N batch, K keypoints (17), P visual tokens, D embedding dim.
    """

    predictions: torch.Tensor  # (N, K, *output_shape)
    keypoint_tokens: torch.Tensor  # (N, K, D)
    visual_tokens: torch.Tensor  # (N, P, D)
