"""Building blocks shared by the segmentation networks: normalisation, conv-BN-ReLU, ASPP,
the DeepLabv3+ decoder and the encoder–decoder shell both networks are built on.

Every network built from :class:`EncoderDecoderSegNet` has the named parts ``backbone``
(returns stride-4 low-level and high-level features), ``aspp`` (its input are the
high-level backbone features), ``decoder`` (its output is the classifier input ``z``) and
``classifier`` (the final 1×1 conv).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.conventions import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported to the networks)


class ImageNormalize(nn.Module):
    """Maps float images (B, 3, H, W) in [0, 1] to ImageNet-normalised inputs."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ConvBNReLU(nn.Sequential):
    """``Conv2d(k×k, no bias) → BatchNorm2d → ReLU``; padding keeps the size at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool → 1×1 conv (with bias) → ReLU → broadcast to the
    input size. No BatchNorm here, so training works with batches of one image."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, one dilated 3×3 branch per rate and image
    pooling, concatenated and projected by a 1×1 conv-BN-ReLU.

    Input (B, in_channels, h, w) → output (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int]):
        super().__init__()
        branches = [ConvBNReLU(in_channels, out_channels, kernel_size=1)]
        branches += [ConvBNReLU(in_channels, out_channels, kernel_size=3, dilation=int(r)) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(out_channels * len(branches), out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    """DeepLabv3+ decoder: reduce the stride-4 low-level features with a 1×1 conv-BN-ReLU,
    upsample the ASPP output to their size, concatenate, apply ``num_convs`` 3×3 conv-BN-ReLU
    and ``Dropout2d``.

    ``forward(low (B, low_in, h4, w4), context (B, context_channels, h, w))`` → ``z`` (B, out_channels, h4, w4).
    """

    def __init__(self, low_in: int, low_channels: int, context_channels: int, out_channels: int,
                 num_convs: int = 2, dropout: float = 0.1):
        super().__init__()
        self.reduce_low = ConvBNReLU(low_in, low_channels, kernel_size=1)
        convs = [ConvBNReLU(low_channels + context_channels, out_channels)]
        convs += [ConvBNReLU(out_channels, out_channels) for _ in range(num_convs - 1)]
        self.fuse = nn.Sequential(*convs)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, low: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        low = self.reduce_low(low)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.dropout(self.fuse(torch.cat([low, context], dim=1)))


class EncoderDecoderSegNet(nn.Module):
    """``backbone → aspp → decoder → classifier (1×1)``, logits upsampled to the input size.

    Input: float images (B, 3, H, W) in [0, 1] (normalised internally).
    Output: logits (B, num_classes, H, W); the classifier itself runs at stride 4.
    """

    def __init__(self, backbone: nn.Module, aspp: ASPP, decoder: Decoder, feature_channels: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.feature_channels = int(feature_channels)
        self.normalize = ImageNormalize()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        self.classifier = nn.Conv2d(feature_channels, num_classes, kernel_size=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] → classifier input ``z`` (B, feature_channels, H/4, W/4)."""
        low, high = self.backbone(self.normalize(images))
        return self.decoder(low, self.aspp(high))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
