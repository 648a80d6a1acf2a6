"""Parameter and multiply-add counts of the presets, in the paper's convention.

The paper's GFLOPs are mmcv's `get_model_complexity_info`: forward hooks on conv, linear,
norm, ReLU and upsampling modules of one forward of 1 x 3 x the preset's input size (the
paper's 256x192; 128x96 for the nano presets), counting multiply-adds;
the attention matrix products (QK^T, AV) and elementwise ops are not counted. We count the
same way (`gflops`) and report the attention products beside it (`gflops_with_attention`).
The forward runs on the meta device: shapes only, no arithmetic, so the table is instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from sdpose.core.presets import PRESETS, ModelConfig, resolve_model_config
from sdpose.models.mct import Attention, PatchEmbedding, SDPose
from sdpose.models.student import StudentGraph, TokenAttention

Counter = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]


def _conv(module: nn.Conv2d, inputs: torch.Tensor, output: torch.Tensor) -> int:
    positions = output.shape[0] * math.prod(output.shape[2:])
    per_position = math.prod(module.kernel_size) * module.in_channels * module.out_channels
    bias = module.out_channels if module.bias is not None else 0
    return (per_position // module.groups + bias) * positions


def _linear(module: nn.Linear, inputs: torch.Tensor, output: torch.Tensor) -> int:
    return inputs.numel() * output.shape[-1]  # mmcv ignores the bias


def _norm(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return inputs.numel() * (2 if affine else 1)


def _elementwise(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    return output.numel()


def _attention_products(module: Attention, inputs: torch.Tensor, output: torch.Tensor) -> int:
    batch, length, dim = inputs.shape
    return 2 * batch * length * length * dim  # QK^T and AV over all heads


def _query_key_products(module: TokenAttention, query: torch.Tensor, key: torch.Tensor) -> int:
    batch, queries, dim = query.shape
    return 2 * batch * queries * key.shape[1] * dim  # QK^T and AV, Lq queries on Lk keys


# Exact types, as mmcv matches them: a subclass is not counted.
MMCV_COUNTERS: dict[type, Counter] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _norm,
    nn.LayerNorm: _norm,
    nn.ReLU: _elementwise,
    nn.Upsample: _elementwise,
    PatchEmbedding: _linear,  # a Linear run as a strided conv: counted as the Linear it is
}


class MacCounter:
    """While active, module hooks add up multiply-adds: `macs` in mmcv's convention and
    `attention_macs`, the attention matrix products mmcv leaves out."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.macs = 0
        self.attention_macs = 0
        self._handles: list = []

    def __enter__(self) -> MacCounter:
        for module in self.model.modules():
            if type(module) in MMCV_COUNTERS or type(module) in (Attention, TokenAttention):
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if type(module) is Attention:
            self.attention_macs += _attention_products(module, args[0], output)
        elif type(module) is TokenAttention:
            self.attention_macs += _query_key_products(module, args[0], args[1])
        else:
            self.macs += MMCV_COUNTERS[type(module)](module, args[0], output)


def count_macs(
    model: nn.Module, images: torch.Tensor, cycles: int | None, with_attention: bool = False
) -> int:
    """Multiply-adds of `model(images, cycles)` per image, counted by module hooks.

    cycles=None counts the model's default forward (one cycle in eval mode).
    """
    with MacCounter(model) as counter, torch.no_grad():
        model(images, cycles=cycles)
    total = counter.macs + (counter.attention_macs if with_attention else 0)
    return total // images.shape[0]


def model_info(preset_or_config: str | ModelConfig) -> dict:
    """Params and GMACs of one preset (or config).

    params: trainable; params_total: every parameter plus the fixed sine embedding (what the
    official model's `parameters()` holds); gflops: one-cycle inference in the paper's
    convention; gflops_train: all configured cycles; gflops_deployed: the exported student
    graph, attention products included.
    """
    config = (
        resolve_model_config(preset_or_config)
        if isinstance(preset_or_config, str)
        else preset_or_config
    )
    with torch.device("meta"):
        model = SDPose(config).eval()
        images = torch.empty(1, 3, *config.input_size)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # The backbone once, then the head with one and with all cycles: same sums as whole
    # forwards, without paying for the (slow, on meta) backbone three times.
    with torch.no_grad(), MacCounter(model.backbone) as backbone:
        features = model.backbone(images)
    with torch.no_grad(), MacCounter(model.head) as one_cycle:
        model.head(features, 1)
    with torch.no_grad(), MacCounter(model.head) as all_cycles:
        model.head(features, config.cycles)
    deployed_head = StudentGraph(model).model.head
    with torch.no_grad(), MacCounter(deployed_head) as deployed:
        deployed_head(features, 1)
    inference = backbone.macs + one_cycle.macs
    train = backbone.macs + all_cycles.macs
    return {
        "preset": config.name,
        "cycles": config.cycles,
        "input": "x".join(map(str, config.input_size)),
        "output": _output(config),
        "params": params,
        "params_total": params + fixed_params + model.head.pos_embedding.numel(),
        "gflops": inference / 1e9,
        "gflops_with_attention": (inference + one_cycle.attention_macs) / 1e9,
        "gflops_train": train / 1e9,
        "gflops_per_extra_cycle": (train - inference) / max(config.cycles - 1, 1) / 1e9,
        "gflops_deployed": (backbone.macs + deployed.macs + deployed.attention_macs) / 1e9,
    }


def _output(config: ModelConfig) -> str:
    """What the head predicts per keypoint: an HxW heatmap, or SimCC's x+y bins."""
    if config.head == "simcc":
        return f"simcc {config.simcc_bins[0]}+{config.simcc_bins[1]}"
    return "x".join(map(str, config.heatmap_size))


def model_info_table() -> list[dict]:
    """`model_info` of every preset, in zoo order."""
    return [model_info(name) for name in PRESETS]
