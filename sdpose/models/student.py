"""The deployed student as an inference graph: one cycle, rewritten to run fast, exactly.

Training needs every cycle's tokens; the deployed model needs only the first cycle's
head output (heatmaps or SimCC logits), and that reads the K keypoint tokens alone. Three
exact rewrites follow:

- The last layer updates only the keypoint tokens: its queries, output projection and MLP
  run on K of the K+P tokens, while keys and values still see all of them. The visual
  tokens it would have produced feed nothing (5% of sdpose-t's one-cycle work).
- Attention is one `sdpose::attention` op on merged-head (N, L, D) tensors. Export writes
  it as the standard ONNX `Attention` (opset >= 23): no head split and merge transposes,
  softmax fused with both products. Below opset 23 it stays MatMul and Softmax.
- Exact GELU is respelled x * (1 + erf(x / sqrt 2)) * 0.5, the form onnxruntime fuses.

Export parity checks the rewritten graph against the untouched model.

Shapes: N batch, K keypoints, P visual tokens, L tokens, D embedding dim.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from sdpose.models.mct import SDPose, TransformerLayer


def split_heads_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention on merged heads: (N, Lq, D), (N, Lk, D) x 2 -> (N, Lq, D)."""
    dim = query.shape[-1]

    def split(tokens: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, heads, L, D/heads)
        return tokens.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    mixed = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return mixed.transpose(1, 2).flatten(2)


@torch.library.custom_op("sdpose::attention", mutates_args=())
def fused_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """`split_heads_attention` as one opaque op, so that export can map it to one node."""
    return split_heads_attention(query, key, value, heads).contiguous()


@fused_attention.register_fake
def _fused_attention_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    return torch.empty_like(query)


class TokenAttention(nn.Module):
    """The attention products of one layer; a module so that cost counting can hook it."""

    def __init__(self, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        attend = fused_attention if self.fused else split_heads_attention
        return attend(query, key, value, self.heads)


class StudentLayer(nn.Module):
    """A trained TransformerLayer for inference; with `queries`, only the first `queries`
    tokens are updated (and returned), the rest serving as keys and values."""

    def __init__(self, layer: TransformerLayer, queries: int | None, fused: bool) -> None:
        super().__init__()
        dim = layer.attn.proj.in_features
        self.queries = queries
        self.attn_norm, self.proj = layer.attn_norm, layer.attn.proj
        self.attention = TokenAttention(layer.attn.heads, fused)
        self.mlp_norm, self.mlp = layer.mlp_norm, layer.mlp
        # q, k and v as three Linears over rows of the qkv weight: no Split copy in the graph
        self.query = _linear_rows(layer.attn.qkv, 0, dim)
        self.key = _linear_rows(layer.attn.qkv, dim, 2 * dim)
        self.value = _linear_rows(layer.attn.qkv, 2 * dim, 3 * dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.attn_norm(tokens)
        key, value = self.key(normed), self.value(normed)
        if self.queries is not None:
            normed, tokens = normed[:, : self.queries], tokens[:, : self.queries]
        query = self.query(normed)
        residual = tokens
        tokens = residual + self.proj(self.attention(query, key, value))
        return tokens + self.mlp(self.mlp_norm(tokens))


def _linear_rows(linear: nn.Linear, start: int, stop: int) -> nn.Linear:
    """A Linear computing output features start:stop of `linear`."""
    part = nn.Linear(linear.in_features, stop - start, bias=linear.bias is not None)
    part = part.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(linear.weight[start:stop])
        if linear.bias is not None:
            part.bias.copy_(linear.bias[start:stop])
    return part.requires_grad_(False)


class StudentGraph(nn.Module):
    """images (N, 3, H, W) -> the first cycle's head output (N, K, *O), the graph that ships:
    heatmaps (N, K, h, w) or SimCC logits (N, K, Wx + Hy).

    A rewritten copy: the given model is left as it is. `fused_attention` picks the one-op
    attention (for ONNX opset >= 23) or the MatMul/Softmax form.
    """

    def __init__(self, model: SDPose, fused_attention: bool = True) -> None:
        super().__init__()
        self.model = _with_fusable_gelu(model)
        head = self.model.head
        last = len(head.layers) - 1
        head.layers = nn.ModuleList(
            StudentLayer(layer, head.num_keypoints if index == last else None, fused_attention)
            for index, layer in enumerate(head.layers)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # One cycle only: after the last layer just the K keypoint tokens are left.
        return self.model(images, cycles=1)[0].predictions


class _FusableGelu(nn.Module):
    """Exact (erf) GELU in the operation order onnxruntime's GELU fusion recognises."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values * (1.0 + torch.erf(values / math.sqrt(2.0)))) * 0.5


def _with_fusable_gelu(model: nn.Module) -> nn.Module:
    """A copy of the model (in eval mode) whose exact GELUs are `_FusableGelu`."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(module, name, _FusableGelu())
    return model
