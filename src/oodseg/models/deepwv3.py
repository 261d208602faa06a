"""NVIDIA's DeepLabv3+ with the WideResNet38 trunk (``DeepWV3Plus``) and the seed papers' variants.

* :class:`DeepWV3Plus` — NVIDIA ``semantic-segmentation`` (branch ``sdcnet``, ``network/deepv3.py``);
  the network of Meta-OoD, PGN, RPL and the SegmentMeIfYouCan baselines.
* :class:`DeepWV3PlusRPL` — RPL (Liu et al. 2023, ``yyliu01/RPL``, ``model/wide_network.py``): the
  frozen network plus the residual block, with the CoroCL projector optional.
* :class:`DeepWV3PlusTH` — DenseHybrid (Grcić et al. 2022, ``matejgrcic/DenseHybrid``,
  ``models/deeplabv3/deeplabv3.py``): plus a BN-ReLU-conv OoD head on the decoder features.

State-dict keys equal the published ones after stripping ``module.`` / ``branch1.``. Every model
takes RGB in [0, 1] and applies the ImageNet mean/std inside ``forward`` (non-persistent buffers),
as the sources' data pipelines (DenseHybrid: its forward) did. The decoder and the classifier
``final.6`` (1×1, no bias) run at stride 2; logits are upsampled with ``align_corners=True``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.models.blocks import IMAGENET_MEAN, IMAGENET_STD, ConvBNReLU, ImageNormalize
from oodseg.models.source import SourceConventions
from oodseg.models.ldn import BNReLUConv
from oodseg.models.wideresnet import wider_resnet38_modules

#: ASPP dilation rates at output stride 8 (NVIDIA doubles its (6, 12, 18)).
ASPP_RATES = (12, 24, 36)
TRUNK_CHANNELS = 4096
FINE_CHANNELS = 128
ASPP_WIDTH = 256
DECODER_CHANNELS = 304  # 48 fine + 256 context


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """NVIDIA's ``Upsample``: bilinear with ``align_corners=True`` to ``size``."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ConcatASPP(nn.Module):
    """NVIDIA's atrous spatial pyramid pooling, WITHOUT a projection: the branches are concatenated.

    ``features[0]`` 1×1, ``features[1..]`` 3×3 with dilation = padding = each rate, ``img_conv`` on
    the global average; each ``conv → BN → ReLU`` without bias. Input (B, in_channels, h, w) →
    (B, width · (2 + len(rates)), h, w) in the order ``[image pooling, 1×1, rate 1, rate 2, …]``.
    """

    def __init__(self, in_channels: int = TRUNK_CHANNELS, width: int = ASPP_WIDTH,
                 rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        branches = [ConvBNReLU(in_channels, width, kernel_size=1)]
        branches += [ConvBNReLU(in_channels, width, kernel_size=3, dilation=int(rate)) for rate in rates]
        self.features = nn.ModuleList(branches)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = ConvBNReLU(in_channels, width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.img_conv(self.img_pooling(x))
        # the source upsamples the 1×1 map with align_corners=True, which is exactly a broadcast
        levels = [pooled.expand(-1, -1, x.shape[-2], x.shape[-1])]
        levels += [branch(x) for branch in self.features]
        return torch.cat(levels, dim=1)


class DeepWV3Plus(SourceConventions, nn.Module):
    """DeepLabv3+ with a WideResNet38-A2 trunk (architecture ``"deepwv3plus"``), 137,103,936
    parameters for 19 classes.

    ``m2 = mod2(pool2(mod1(x)))`` (stride 2) feeds ``bot_fine`` (1×1, 128→48); the stride-8 trunk
    output feeds the ASPP (rates 12/24/36), ``bot_aspp`` (1×1, 1280→256) and an upsampling to
    ``m2``'s size; ``final`` (3×3 conv-BN-ReLU ×2, 1×1 classifier ``final.6`` without bias) runs on
    ``[fine, context]`` (304 channels) at stride 2.

    Input (B, 3, H, W) RGB in [0, 1]; output logits (B, num_classes, H, W), bilinear with
    ``align_corners=True`` from stride 2.
    """

    align_corners = True
    normalization = (IMAGENET_MEAN, IMAGENET_STD)
    output_stride = 2
    head_name = "final.6"
    source = "NVIDIA/semantic-segmentation@sdcnet network/deepv3.py:DeepWV3Plus"
    rpl_residual_module = "final"  # RPL adds its residual to dec0, the input of the whole classifier block

    def __init__(self, num_classes: int = 19):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.normalize = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD)
        for name, module in wider_resnet38_modules().items():
            self.add_module(name, module)
        self.aspp = ConcatASPP()
        self.bot_fine = nn.Conv2d(FINE_CHANNELS, 48, kernel_size=1, bias=False)
        self.bot_aspp = nn.Conv2d(ASPP_WIDTH * (2 + len(ASPP_RATES)), ASPP_WIDTH, kernel_size=1, bias=False)
        self.final = nn.Sequential(*ConvBNReLU(DECODER_CHANNELS, 256), *ConvBNReLU(256, 256),
                                   nn.Conv2d(256, num_classes, kernel_size=1, bias=False))

    def trunk(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] → (fine ``m2`` (B, 128, H/2, W/2), high-level (B, 4096, H/8, W/8))."""
        x = self.mod1(self.normalize(images))
        fine = self.mod2(self.pool2(x))
        x = self.mod4(self.mod3(self.pool3(fine)))
        return fine, self.mod7(self.mod6(self.mod5(x)))

    def decoder_features(self, fine: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """``dec0``: (B, 304, h2, w2) = ``[bot_fine(fine), upsampled bot_aspp(aspp(high))]``, fine first."""
        context = upsample(self.bot_aspp(self.aspp(high)), fine.shape[-2:])
        return torch.cat([self.bot_fine(fine), context], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fine, high = self.trunk(images)
        return upsample(self.final(self.decoder_features(fine, high)), images.shape[-2:])


class ProjectionHead(nn.Module):
    """RPL+CoroCL's projector: ``proj`` = ``Sequential(Conv2d 1×1 with bias)`` (keys ``proj.0.*``)."""

    def __init__(self, in_channels: int = ASPP_WIDTH, projection_dim: int = DECODER_CHANNELS):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, projection_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RPLResidualBlock(nn.Module):
    """RPL's ``ResidualAnomalyBlock``: a second ASPP on the trunk output, ``bot_atten_aspp`` (1×1,
    1280→256), upsampled (``align_corners=True``) to the decoder's size, then ``atten_aspp_final``
    (1×1, 256→304, no bias) gives the residual added to ``dec0``. ``proj_head`` (CoroCL, training
    only) projects the 256-channel upsampled map to 304 dims.
    """

    def __init__(self, projector: bool = False):
        super().__init__()
        self.atten_aspp = ConcatASPP()
        self.bot_atten_aspp = nn.Conv2d(ASPP_WIDTH * (2 + len(ASPP_RATES)), ASPP_WIDTH, kernel_size=1, bias=False)
        self.atten_aspp_final = nn.Conv2d(ASPP_WIDTH, DECODER_CHANNELS, kernel_size=1, bias=False)
        self.proj_head = ProjectionHead() if projector else None

    def forward(self, high: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """High-level (B, 4096, h8, w8) → (residual (B, 304, *size), hidden (B, 256, *size))."""
        hidden = upsample(self.bot_atten_aspp(self.atten_aspp(high)), size)
        return self.atten_aspp_final(hidden), hidden


class DeepWV3PlusRPL(DeepWV3Plus):
    """DeepWV3Plus + RPL's residual block (architecture ``"deepwv3plus-rpl"``); keys are those of
    RPL's ``res.pth`` (``projector=False``) or RPL+CoroCL's ``rev3.pth`` (``projector=True``)
    after stripping ``branch1.``.

    The shared ``final`` runs twice: on ``dec0`` (vanilla logits) and then on ``dec0 + residual``
    (RPL logits), so a hook on ``final.6`` sees the residual logits last. ``forward(images)``
    returns the RPL logits (B, C, H, W) as the source's second output; ``forward(images,
    training_outputs=True)`` returns ``{"vanilla", "rpl"}`` logits at stride 2 and, with the
    projector, ``"projection"`` (B, 304, H/2, W/2).
    """

    source = "yyliu01/RPL rpl.code/model/wide_network.py (rpl_corocl.code with the projector)"

    def __init__(self, num_classes: int = 19, projector: bool = False):
        super().__init__(num_classes)
        self.residual_block = RPLResidualBlock(projector=bool(projector))

    def forward(self, images: torch.Tensor, training_outputs: bool = False):
        fine, high = self.trunk(images)
        residual, hidden = self.residual_block(high, fine.shape[-2:])
        decoder = self.decoder_features(fine, high)
        vanilla = self.final(decoder)
        rpl = self.final(decoder + residual)
        if not training_outputs:
            return upsample(rpl, images.shape[-2:])
        outputs = {"vanilla": vanilla, "rpl": rpl}
        if self.residual_block.proj_head is not None:
            outputs["projection"] = self.residual_block.proj_head(hidden)
        return outputs


class DeepWV3PlusTH(DeepWV3Plus):
    """DenseHybrid's DeepWV3Plus with an OoD head (architecture ``"deepwv3plus-th"``): ``logits_ood``
    = BN(304, momentum 0.01) → ReLU → conv 1×1 304→2 with bias, on the decoder features ``dec0``.

    ``forward(images)`` returns ``{"logits": (B, C, H, W), "ood_logits": (B, 2, H, W)}``, both
    upsampled with ``align_corners=True``; channel 1 of the OoD head is the "outlier" logit.
    """

    extra_heads = {"ood_logits": "logits_ood.conv"}
    source = "matejgrcic/DenseHybrid models/deeplabv3/deeplabv3.py:DeepWV3PlusTH"

    def __init__(self, num_classes: int = 19):
        super().__init__(num_classes)
        self.logits_ood = BNReLUConv(DECODER_CHANNELS, 2, kernel_size=1, bias=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fine, high = self.trunk(images)
        decoder = self.decoder_features(fine, high)
        size = images.shape[-2:]
        return OrderedDict(logits=upsample(self.final(decoder), size), ood_logits=upsample(self.logits_ood(decoder), size))
