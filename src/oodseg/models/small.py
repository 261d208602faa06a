"""SmallSegNet: a DeepLabv3+-shaped network small and fast enough to train on a CPU."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.models.blocks import ASPP, ConvBNReLU, Decoder, EncoderDecoderSegNet


class TinyBackbone(nn.Module):
    """Stages of ``convs_per_stage`` 3×3 conv-BN-ReLU, the first of each with stride 2.

    ``forward(x (B,3,H,W)) -> (low (B, widths[1], H/4, W/4), high (B, widths[-1], H/2^n, W/2^n))``
    with ``n = len(widths)``.
    """

    def __init__(self, widths: Sequence[int], convs_per_stage: int = 2):
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"widths needs at least 3 stages (stride-4 skip + deeper features), got {list(widths)}")
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        stages, channels = [], 3
        for width in widths:
            convs = [ConvBNReLU(channels, width, stride=2)]
            convs += [ConvBNReLU(width, width) for _ in range(convs_per_stage - 1)]
            stages.append(nn.Sequential(*convs))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.low_channels = int(widths[1])
        self.high_channels = int(widths[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.pyramid(x)[1:]
        return low, high

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fine (B, widths[0], H/2, W/2), low (B, widths[1], H/4, W/4), high)`` features."""
        fine = self.stages[0](x)
        low = self.stages[1](fine)
        high = low
        for stage in self.stages[2:]:
            high = stage(high)
        return fine, low, high


class RefinedDecoder(Decoder):
    """DeepLabv3+ decoder followed by a stride-2 refinement, so thin structures (poles, sign posts,
    bicycle frames) two pixels wide keep their own logits.

    ``forward(fine (B, fine_in, h2, w2), low (B, low_in, h4, w4), context (B, context_channels, h, w))``
    → ``z`` (B, out_channels, h2, w2): the stride-4 decoder output (``mid_channels``), upsampled
    bilinearly and concatenated with the 1×1-reduced stride-2 features, then one
    ``conv3×3 → BN → ReLU`` (``refine``) and ``Dropout2d``.
    """

    def __init__(self, fine_in: int, fine_channels: int, low_in: int, low_channels: int, context_channels: int,
                 mid_channels: int, out_channels: int, dropout: float = 0.1):
        super().__init__(low_in, low_channels, context_channels, mid_channels, num_convs=1, dropout=dropout)
        self.reduce_fine = ConvBNReLU(fine_in, fine_channels, kernel_size=1)
        self.refine = ConvBNReLU(mid_channels + fine_channels, out_channels)

    def forward(self, fine: torch.Tensor, low: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        low = self.reduce_low(low)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        mid = self.fuse(torch.cat([low, context], dim=1))
        mid = F.interpolate(mid, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.dropout(self.refine(torch.cat([self.reduce_fine(fine), mid], dim=1)))


class SmallSegNet(EncoderDecoderSegNet):
    """Small DeepLabv3+-style network (architecture name ``"small"``), ~0.7 M parameters by default.

    Same named parts as :class:`~oodseg.models.deeplab.DeepLabV3Plus` (``backbone``, ``aspp``,
    ``decoder``, ``classifier``); the decoder ends with ``conv3×3 → BN → ReLU → Dropout2d``.
    Input (B, 3, H, W) floats in [0, 1]; output logits (B, num_classes, H, W); the backbone's
    output stride is ``2 ** len(widths)`` (16 by default). With ``fine_channels > 0`` the
    decoder is a :class:`RefinedDecoder` and the classifier runs at stride 2 on
    ``refine_channels`` features; ``fine_channels = 0`` is the plain stride-4 decoder.
    """

    def __init__(self, num_classes: int = 19, widths: Sequence[int] = (24, 48, 96, 128), convs_per_stage: int = 2,
                 aspp_channels: int = 64, aspp_rates: Sequence[int] = (2, 4, 6), low_channels: int = 24,
                 decoder_channels: int = 64, dropout: float = 0.1, fine_channels: int = 0,
                 refine_channels: int = 32):
        backbone = TinyBackbone(tuple(widths), convs_per_stage)
        aspp = ASPP(backbone.high_channels, aspp_channels, tuple(aspp_rates))
        if fine_channels > 0:
            decoder = RefinedDecoder(int(widths[0]), fine_channels, backbone.low_channels, low_channels, aspp_channels,
                                     decoder_channels, refine_channels, dropout=dropout)
            feature_channels = refine_channels
        else:
            decoder = Decoder(backbone.low_channels, low_channels, aspp_channels, decoder_channels, num_convs=1,
                              dropout=dropout)
            feature_channels = decoder_channels
        super().__init__(backbone, aspp, decoder, feature_channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] → classifier input ``z`` (B, feature_channels, H/s, W/s), s = 2 or 4."""
        if not isinstance(self.decoder, RefinedDecoder):
            return super().features(images)
        fine, low, high = self.backbone.pyramid(self.normalize(images))
        return self.decoder(fine, low, self.aspp(high))
