"""CNN backbones that turn a 3 x H x W crop into the H/4 x W/4 feature map the MCT head reads.

Module and attribute names follow the official MMPose code (conv1/bn1/layer1/...,
transition1/stage2/branches/fuse_layers) so that official state dicts load by prefix alone.
ReLUs are modules, called once per use, because the paper's FLOP convention counts them
through module hooks.

Shapes: N batch, C channels, H x W spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

BN_MOMENTUM = 0.1


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM)]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block, widening `planes` by 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.conv3, self.bn3 = _conv_bn(planes, out_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (HRNet branches keep their width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(channels, channels, 3)
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def bottleneck_layer(in_ch: int, planes: int, blocks: int) -> nn.Sequential:
    """`blocks` bottlenecks; the first projects the shortcut when the width changes."""
    out_ch = planes * Bottleneck.expansion
    downsample = nn.Sequential(*_conv_bn(in_ch, out_ch, 1)) if in_ch != out_ch else None
    layers = [Bottleneck(in_ch, planes, downsample)]
    layers += [Bottleneck(out_ch, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class StemNet(nn.Module):
    """Two stride-2 3x3 convs and a bottleneck layer: (N,3,H,W) -> (N,4*planes,H/4,W/4).

    The official StemNet is channels=64, planes=64, blocks=4 (256 output channels).
    """

    def __init__(self, channels: int = 64, planes: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, channels, 3, stride=2)
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = bottleneck_layer(channels, planes, blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.layer1(x)


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks, then every output branch sums all inputs resized."""

    def __init__(self, widths: list[int], blocks: int, out_branches: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(width) for _ in range(blocks)]) for width in widths
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse(widths, src, dst) for src in range(len(widths)))
            for dst in range(out_branches)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [branch(x) for branch, x in zip(self.branches, inputs, strict=True)]
        outputs = []
        for fuse in self.fuse_layers:
            # Summed in branch order, like the official code, so float rounding matches.
            resized = [resize(feat) for resize, feat in zip(fuse, feats, strict=True)]
            total = resized[0]
            for term in resized[1:]:
                total = total + term
            outputs.append(self.relu(total))
        return outputs


def _fuse(widths: list[int], src: int, dst: int) -> nn.Module:
    """Branch src resized to branch dst: 1x1 conv + nearest upsampling, or 3x3/2 convs."""
    if src == dst:
        return nn.Identity()
    if src > dst:
        upsample = nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest")
        return nn.Sequential(*_conv_bn(widths[src], widths[dst], 1), upsample)
    steps = []
    for step in range(dst - src):
        last = step == dst - src - 1
        out_ch = widths[dst] if last else widths[src]
        layers = _conv_bn(widths[src], out_ch, 3, stride=2)
        steps.append(nn.Sequential(*layers) if last else nn.Sequential(*layers, nn.ReLU(True)))
    return nn.Sequential(*steps)


def _transition(in_widths: list[int], out_widths: list[int]) -> nn.ModuleList:
    """Keep existing branches (or re-width them); grow new ones from the lowest resolution."""
    layers: list[nn.Module] = []
    for index, width in enumerate(out_widths):
        if index < len(in_widths):
            same = in_widths[index] == width
            conv = nn.Sequential(*_conv_bn(in_widths[index], width, 3), nn.ReLU(True))
            layers.append(nn.Identity() if same else conv)
        else:
            source = in_widths[-1]
            steps = []
            for step in range(index + 1 - len(in_widths)):
                out_ch = width if step == index - len(in_widths) else source
                steps.append(nn.Sequential(*_conv_bn(source, out_ch, 3, stride=2), nn.ReLU(True)))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNet3Stage(nn.Module):
    """HRNet-W32 cut after stage 3, as the official SDPose-B config builds it.

    Stage 1 is 4 bottlenecks of width 32 (128 out, not the usual 64/256), stage 2 one module
    of widths (32, 64), stage 3 four modules of (32, 64, 128); the last module fuses into
    the highest-resolution branch only, which is the output: (N,3,H,W) -> (N,32,H/4,W/4).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        widths2, widths3 = [width, 2 * width], [width, 2 * width, 4 * width]
        self.conv1, self.bn1 = _conv_bn(3, 64, 3, stride=2)
        self.conv2, self.bn2 = _conv_bn(64, 64, 3, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = bottleneck_layer(64, width, 4)
        self.transition1 = _transition([4 * width], widths2)
        self.stage2 = nn.Sequential(HRModule(widths2, 4, out_branches=2))
        self.transition2 = _transition(widths2, widths3)
        self.stage3 = nn.Sequential(
            *[HRModule(widths3, 4, out_branches=3 if i < 3 else 1) for i in range(4)]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        feats = [step(x) for step in self.transition1]
        feats = self.stage2(feats)
        # New branches grow from the lowest-resolution output, as in the official code.
        feats = [
            step(feats[i] if i < len(feats) else feats[-1])
            for i, step in enumerate(self.transition2)
        ]
        return self.stage3(feats)[0]


def build_backbone(config) -> nn.Module:  # config: ModelConfig
    """The CNN in front of the head; 'none' passes the image through unchanged."""
    if config.backbone == "stem":
        return StemNet(config.stem_channels, config.stem_planes, config.stem_blocks)
    if config.backbone == "hrnet_w32":
        return HRNet3Stage(32)
    return nn.Identity()
