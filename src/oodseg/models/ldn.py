"""LDN-121: DenseHybrid's ladder-style DenseNet-121 with an OoD head (``LadderDenseNetTH``), pure torch.

Follows ``matejgrcic/DenseHybrid`` ``models/ladder_densenet.py`` (Krešo et al.'s ladder DenseNet)
so that its released state dicts load strictly: 827 keys, 11,067,928 parameters for 19 classes.
Every BatchNorm has momentum 0.01. No input normalisation (the source feeds ``ToTensor()``
output, RGB in [0, 1]); logits are upsampled bilinearly with ``align_corners=False``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.models.source import SourceConventions

BN_MOMENTUM = 0.01
BLOCK_CONFIG = (6, 12, 24, 16)
GROWTH_RATE = 32
BOTTLENECK_WIDTH = 4  # 1×1 conv of a dense layer: BOTTLENECK_WIDTH · GROWTH_RATE channels
INIT_FEATURES = 64
SPP_GRIDS = (8, 4, 2, 1)
SPP_WIDTH = 512
UP_SIZES = (256, 256, 128)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class BNReLUConv(nn.Sequential):
    """Pre-activation ``norm`` (BN, momentum 0.01) → ``relu`` → ``conv`` (k×k, padding k//2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        super().__init__(OrderedDict(
            norm=_bn(in_channels), relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)))


class DenseLayer(nn.Sequential):
    """``norm1 → relu1 → conv1`` (1×1 → 128) ``→ norm2 → relu2 → conv2`` (3×3 → growth rate 32)."""

    def __init__(self, in_channels: int):
        width = BOTTLENECK_WIDTH * GROWTH_RATE
        super().__init__(OrderedDict(
            norm1=_bn(in_channels), relu1=nn.ReLU(inplace=True),
            conv1=nn.Conv2d(in_channels, width, 1, bias=False),
            norm2=_bn(width), relu2=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(width, GROWTH_RATE, 3, padding=1, bias=False)))


class DenseBlock(nn.Module):
    """``denselayer1..n``; each sees the concatenation of the block input and all previous layer outputs.

    (B, in_channels, h, w) → (B, in_channels + n · 32, h, w).
    """

    def __init__(self, num_layers: int, in_channels: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * GROWTH_RATE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """``norm → relu → conv`` (1×1) ``→ pool``: AvgPool2d(3, stride 2, padding 1, count_include_pad=False)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(OrderedDict(
            norm=_bn(in_channels), relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pool=nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)))


class DenseNet121(nn.Module):
    """DenseNet-121 trunk without ``norm5``: ``features`` = conv0 (7×7/2) → norm0 → relu0 → pool0
    (max 2×2/2) → denseblock1, transition1, …, denseblock4.

    ``forward(x (B,3,H,W)) -> (x (B, 1024, H/32, W/32), skips)`` with ``skips`` the outputs of dense
    blocks 1–3: (B, 256, H/4, W/4), (B, 512, H/8, W/8), (B, 1024, H/16, W/16).
    """

    def __init__(self):
        super().__init__()
        layers = OrderedDict(conv0=nn.Conv2d(3, INIT_FEATURES, 7, stride=2, padding=3, bias=False),
                             norm0=_bn(INIT_FEATURES), relu0=nn.ReLU(inplace=True),
                             pool0=nn.MaxPool2d(2, stride=2))
        channels = INIT_FEATURES
        self.skip_channels: list[int] = []
        for i, num_layers in enumerate(BLOCK_CONFIG):
            layers[f"denseblock{i + 1}"] = DenseBlock(num_layers, channels)
            channels += num_layers * GROWTH_RATE
            if i < len(BLOCK_CONFIG) - 1:
                self.skip_channels.append(channels)
                layers[f"transition{i + 1}"] = Transition(channels, channels // 2)
                channels //= 2
        self.features = nn.Sequential(layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for name, module in self.features.named_children():
            if name.startswith("transition"):
                skips.append(x)
            x = module(x)
        return x, skips


class SpatialPyramidPooling(nn.Module):
    """``spp_bn`` (1×1 → 512), then per grid g in (8, 4, 2, 1) ``spp{i}`` (1×1 → 128) on the average
    pool to ``(g, max(1, round(W/H · g)))`` upsampled back (``align_corners=False``), concatenated with
    the ``spp_bn`` output and fused by ``spp_fuse`` (1×1 → 512). (B, C, h, w) → (B, 512, h, w).
    """

    def __init__(self, in_channels: int):
        super().__init__()
        level = SPP_WIDTH // len(SPP_GRIDS)
        layers = OrderedDict(spp_bn=BNReLUConv(in_channels, SPP_WIDTH, 1))
        for i in range(len(SPP_GRIDS)):
            layers[f"spp{i}"] = BNReLUConv(SPP_WIDTH, level, 1)
        layers["spp_fuse"] = BNReLUConv(SPP_WIDTH + level * len(SPP_GRIDS), SPP_WIDTH, 1)
        self.spp = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        aspect = size[1] / size[0]
        x = self.spp.spp_bn(x)
        levels = [x]
        for i, grid in enumerate(SPP_GRIDS):
            pooled = F.adaptive_avg_pool2d(x, (grid, max(1, round(aspect * grid))))  # Python round, as the source
            levels.append(_resize(self.spp[i + 1](pooled), size))
        return self.spp.spp_fuse(torch.cat(levels, dim=1))


class LadderUpsample(nn.Module):
    """One ladder stage: ``x = blend_conv(resize(x, skip) + bottleneck(skip))`` (``align_corners=False``).

    ``logits_aux`` (1×1 → 1 channel) holds weights of the released files; the source computes it
    and discards the result, so it is not run here.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.bottleneck = BNReLUConv(skip_channels, in_channels, 1)
        self.blend_conv = BNReLUConv(in_channels, out_channels, 3)
        self.logits_aux = BNReLUConv(in_channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.bottleneck(skip)
        return self.blend_conv(_resize(x, skip.shape[-2:]) + skip)


class LadderDecoder(nn.Module):
    """``upsample_layers.upsample_{0,1,2}`` from stride 32 to 4 with widths (256, 256, 128)."""

    def __init__(self, in_channels: int, skip_channels: Sequence[int]):
        super().__init__()
        stages = OrderedDict()
        for i, (skip, out) in enumerate(zip(reversed(skip_channels), UP_SIZES)):
            stages[f"upsample_{i}"] = LadderUpsample(in_channels, skip, out)
            in_channels = out
        self.upsample_layers = nn.Sequential(stages)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.upsample_layers, reversed(skips)):
            x = stage(x, skip)
        return x


class LDN121(SourceConventions, nn.Module):
    """DenseHybrid's LDN-121 (``LadderDenseNetTH``; architecture ``"ldn121"``).

    DenseNet-121 → SPP (kept under ``spp.spp`` as in the released keys) → three ladder stages →
    ``logits`` (BN-ReLU-conv 1×1 128→C with bias; the classifier is ``logits.conv``) and
    ``logits_ood`` (BN-ReLU-conv 1×1 128→2 with bias), both at stride 4.

    Input (B, 3, H, W) RGB in [0, 1], not normalised; output ``{"logits": (B, C, H, W), "ood_logits":
    (B, 2, H, W)}``, bilinear with ``align_corners=False``.
    """

    normalization = None
    output_stride = 4
    head_name = "logits.conv"
    extra_heads = {"ood_logits": "logits_ood.conv"}
    source = "matejgrcic/DenseHybrid models/ladder_densenet.py:LadderDenseNetTH"

    def __init__(self, num_classes: int = 19):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone = DenseNet121()
        self.spp = nn.ModuleDict({"spp": SpatialPyramidPooling(self.backbone.out_channels)})
        self.upsample = LadderDecoder(SPP_WIDTH, self.backbone.skip_channels)
        self.logits = BNReLUConv(self.upsample.out_channels, num_classes, 1, bias=True)
        self.logits_ood = BNReLUConv(self.upsample.out_channels, 2, 1, bias=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, skips = self.backbone(images)
        x = self.upsample(self.spp["spp"](x), skips)
        size = images.shape[-2:]
        return OrderedDict(logits=_resize(self.logits(x), size), ood_logits=_resize(self.logits_ood(x), size))
