"""SmallSegNet: a DeepLabv3+-shaped network small and fast enough to train on a CPU."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from oodseg.models.blocks import ASPP, ConvBNReLU, Decoder, EncoderDecoderSegNet


class TinyBackbone(nn.Module):
    """Stages of 3×3 conv-BN-ReLU, the first of each with stride 2; ``convs_per_stage`` is one
    count for every stage, one per stage, or None: 1 in the first (stride-2) stage, 2 in the others.

    ``forward(x (B,3,H,W)) -> (low (B, widths[1], H/4, W/4), high (B, widths[-1], H/2^n, W/2^n))``
    with ``n = len(widths)``.
    """

    def __init__(self, widths: Sequence[int], convs_per_stage: int | Sequence[int] | None = None):
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"widths needs at least 3 stages (stride-4 skip + deeper features), got {list(widths)}")
        if convs_per_stage is None:
            counts = [1] + [2] * (len(widths) - 1)
        elif isinstance(convs_per_stage, int):
            counts = [convs_per_stage] * len(widths)
        else:
            counts = list(convs_per_stage)
        if len(counts) != len(widths) or min(counts) < 1:
            raise ValueError(f"convs_per_stage must be >= 1, one count or one per stage of widths {list(widths)}, "
                             f"got {convs_per_stage}")
        stages, channels = [], 3
        for width, count in zip(widths, counts):
            convs = [ConvBNReLU(channels, width, stride=2)]
            convs += [ConvBNReLU(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*convs))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.low_channels = int(widths[1])
        self.high_channels = int(widths[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stages[1](self.stages[0](x))
        high = low
        for stage in self.stages[2:]:
            high = stage(high)
        return low, high


class SmallSegNet(EncoderDecoderSegNet):
    """Small DeepLabv3+-style network (architecture name ``"small"``), ~0.7 M parameters by default.

    Same named parts as :class:`~oodseg.models.deeplab.DeepLabV3Plus` (``backbone``, ``aspp``,
    ``decoder``, ``classifier``); the decoder ends with ``conv3×3 → BN → ReLU → Dropout2d``.
    Input (B, 3, H, W) floats in [0, 1]; output logits (B, num_classes, H, W); the backbone's
    output stride is ``2 ** len(widths)`` (16 by default). The stride-2 stage has a single conv by
    default: at the highest resolution a second one costs a fifth of a training step and bought
    no accuracy per step on SynthStreet (README "Baseline training").
    """

    def __init__(self, num_classes: int = 19, widths: Sequence[int] = (24, 48, 96, 128),
                 convs_per_stage: int | Sequence[int] | None = None,
                 aspp_channels: int = 64, aspp_rates: Sequence[int] = (2, 4, 6), low_channels: int = 24,
                 decoder_channels: int = 64, dropout: float = 0.1):
        backbone = TinyBackbone(tuple(widths), convs_per_stage)
        aspp = ASPP(backbone.high_channels, aspp_channels, tuple(aspp_rates))
        decoder = Decoder(backbone.low_channels, low_channels, aspp_channels, decoder_channels, num_convs=1,
                          dropout=dropout)
        super().__init__(backbone, aspp, decoder, decoder_channels, num_classes)
