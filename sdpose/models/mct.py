"""The Multi-Cycled Transformer (MCT) and the full SDPose model.

SDPose's idea: run the SAME transformer layers several times ("cycles"), the output tokens
of one cycle being the input tokens of the next, so a deeper "teacher" costs no extra
parameters; every cycle predicts heatmaps, and the later cycles distil into the earlier
ones. At inference only the first cycle runs, so the student costs one TokenPose pass.

What the official code carries from cycle i to i+1 (checked against the reference fixture):
all K+P output tokens of the last layer, unchanged; the position embedding is re-added to
the visual tokens before layers 2..depth of every cycle ("sine-full"), not before layer 1.

Shapes: N batch, K keypoints, P visual tokens (patches), D embedding dim, C feature
channels, H x W heatmap size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sdpose.core.presets import ModelConfig
from sdpose.models.backbones import build_backbone
from sdpose.models.heads import HeatmapHead, build_head
from sdpose.models.outputs import CycleOutput


def sine_position_embedding(
    grid: tuple[int, int], dim: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed 2-D sine embedding, (1, h*w, dim): dim/2 channels for y, then dim/2 for x.

    Each half interleaves sin and cos of positions normalised to (0, 2*pi]; the float32
    operations are those of the official code, so the result is bit-identical to it.
    """
    height, width = grid
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32)
    frequencies = temperature ** (2 * (exponents // 2) / half)

    def axis(length: int) -> torch.Tensor:  # (length, half)
        positions = torch.arange(1, length + 1, dtype=torch.float32)  # == cumsum of ones
        positions = positions / (positions[-1:] + 1e-6) * (2 * math.pi)
        angles = positions[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    rows = axis(height)[:, None, :].expand(height, width, half)
    cols = axis(width)[None, :, :].expand(height, width, half)
    return torch.cat((rows, cols), dim=2).reshape(1, height * width, dim)


class Attention(nn.Module):
    """Multi-head self-attention with a fused kernel; scale (D/heads)^-0.5."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.heads, dim // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, D/heads)
        mixed = F.scaled_dot_product_attention(query, key, value)
        return self.proj(mixed.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the official model
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class TransformerLayer(nn.Module):
    """Pre-norm block: tokens + attn(norm(tokens)), then tokens + mlp(norm(tokens))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, dim * mlp_ratio)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.attn_norm(tokens))
        return tokens + self.mlp(self.mlp_norm(tokens))


class PatchEmbedding(nn.Linear):
    """Linear projection of each p1 x p2 patch of the feature map: (N, C, H, W) -> (N, P, D).

    The weight keeps the official Linear layout (a patch flattened as (p1, p2, C)) so official
    checkpoints load unchanged, and MAC counting sees a Linear; it runs as a strided conv,
    which avoids a 6-D permute of the feature map (about a tenth of sdpose-t's CPU time).
    """

    def __init__(self, patch_dim: int, dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__(patch_dim, dim)
        self.patch_size = patch_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        (p1, p2), weight = self.patch_size, self.weight
        kernel = weight.reshape(weight.shape[0], p1, p2, -1).permute(0, 3, 1, 2)
        visual = F.conv2d(features, kernel, self.bias, stride=self.patch_size)
        return visual.flatten(2).transpose(1, 2)


class MultiCycleTransformer(nn.Module):
    """Feature map -> tokens -> `cycles` passes of the shared layers -> heatmaps per pass."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.patch_size, self.patch_grid = config.patch_size, config.patch_grid
        self.num_keypoints = config.num_keypoints
        self.readd_pos = config.pos_embedding == "sine-full"
        dim = config.dim
        self.patch_embed = PatchEmbedding(config.patch_dim, dim, config.patch_size)
        self.keypoint_token = nn.Parameter(torch.zeros(1, config.num_keypoints, dim))
        self.layers = nn.ModuleList(
            TransformerLayer(dim, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        # the heatmap head keeps the official attribute name: official checkpoints load
        head = build_head(config)
        self.head_name = "heatmap_head" if isinstance(head, HeatmapHead) else "simcc_head"
        self.add_module(self.head_name, head)
        # Fixed, so not a parameter and not saved: rebuilt bit-exactly from the config.
        # Zeros over the keypoint tokens let one add serve the whole sequence.
        pos = sine_position_embedding(config.patch_grid, dim)
        keypoint_zeros = torch.zeros(1, config.num_keypoints, dim)
        self.register_buffer("token_pos", torch.cat((keypoint_zeros, pos), 1), persistent=False)

    @property
    def pos_embedding(self) -> torch.Tensor:
        """(1, P, D): the sine embedding of the visual tokens."""
        return self.token_pos[:, self.num_keypoints :]

    def forward(self, features: torch.Tensor, cycles: int) -> list[CycleOutput]:
        tokens = self.embed(features)
        outputs = []
        for _ in range(cycles):
            # The next cycle starts from this cycle's output tokens, all K + P of them.
            tokens = self.run_layers(tokens)
            outputs.append(self.readout(tokens))
        return outputs

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h*p1, w*p2) -> (N, K+P, D): keypoint tokens, then patches + position."""
        visual = self.patch_embed(features) + self.pos_embedding
        keypoints = self.keypoint_token.expand(features.shape[0], -1, -1)
        return torch.cat((keypoints, visual), dim=1)

    def run_layers(self, tokens: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            if index > 0 and self.readd_pos:
                tokens = tokens + self.token_pos
            tokens = layer(tokens)
        return tokens

    def readout(self, tokens: torch.Tensor) -> CycleOutput:
        keypoint_tokens = tokens[:, : self.num_keypoints]
        predictions = self.keypoint_head(keypoint_tokens)
        return CycleOutput(predictions, keypoint_tokens, tokens[:, self.num_keypoints :])

    @property
    def keypoint_head(self) -> nn.Module:
        """The configured head (`heatmap_head` or `simcc_head`)."""
        return getattr(self, self.head_name)


class SDPose(nn.Module):
    """Backbone + MCT head. `forward` returns one CycleOutput per cycle run.

    cycles=None runs all configured cycles in training mode and exactly one in eval mode
    (the deployed student); an explicit `cycles` runs that many in either mode.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.head = MultiCycleTransformer(config)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.head.keypoint_token, std=0.02)

    def forward(self, images: torch.Tensor, cycles: int | None = None) -> list[CycleOutput]:
        if cycles is None:
            cycles = self.config.cycles if self.training else 1
        if not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles: {cycles!r} must be a positive integer")
        return self.head(self.backbone(images), cycles)


def _init_weights(module: nn.Module) -> None:
    """The official initialisation for training from scratch."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, std=0.001)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
