"""ResNet backbones (18/34/50/101) whose last stages trade stride for dilation.

``ResNetBackbone(depth, output_stride)`` maps normalised images (B, 3, H, W) to
``(low, high)``: the stride-4 ``layer1`` output and the ``layer4`` output at stride
``output_stride`` (8 or 16).
"""
from __future__ import annotations

import torch
from torch import nn

from oodseg.models.blocks import ConvBNReLU


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut; used by ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided or dilated) → 1×1 expand (×4), with a shortcut; used by ResNet-50/101."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))


RESNET_CONFIGS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}

#: Per output stride: (stride, dilation) of layer2, layer3, layer4.
_STAGE_GEOMETRY = {16: ((2, 1), (2, 1), (1, 2)), 8: ((2, 1), (1, 2), (1, 4))}


class ResNetBackbone(nn.Module):
    """ResNet with dilated last stages. ``forward(x (B,3,H,W)) -> (low (B, low_channels, H/4, W/4),
    high (B, high_channels, H/os, W/os))``."""

    def __init__(self, name: str = "resnet50", output_stride: int = 16):
        super().__init__()
        if name not in RESNET_CONFIGS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_CONFIGS)}")
        if output_stride not in _STAGE_GEOMETRY:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        block, depths = RESNET_CONFIGS[name]
        self.stem = nn.Sequential(ConvBNReLU(3, 64, kernel_size=7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        channels = 64
        geometry = ((1, 1),) + _STAGE_GEOMETRY[output_stride]
        stages = []
        for index, (depth, (stride, dilation)) in enumerate(zip(depths, geometry)):
            width = 64 * 2**index
            blocks = []
            for i in range(depth):
                blocks.append(block(channels, width, stride=stride if i == 0 else 1, dilation=dilation))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.low_channels = 64 * block.expansion
        self.high_channels = channels
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _init_weights(module: nn.Module) -> None:
    """He-normal conv weights, BN γ=1 β=0, and zero γ on each residual branch's last BN."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
