"""The WideResNet38-A2 trunk (Wu et al. 2019, "Wider or deeper") of NVIDIA's DeepWV3Plus, in pure torch.

Layout and key names follow NVIDIA's ``semantic-segmentation`` (branch ``sdcnet``,
``network/wider_resnet.py``, ``wider_resnet38_a2(dilation=True)``) so that its published state
dicts load strictly: pre-activation residual blocks whose BN+ReLU pairs are two-element
``Sequential`` s (keys ``…bn1.0.weight``), stages ``mod1`` … ``mod7`` and the max-pools ``pool2``,
``pool3``. The trunk's own ``bn_out`` and ImageNet classifier are not part of DeepWV3Plus and are
not built. Dropout is ``nn.Dropout2d`` in the bottlenecks of ``mod6`` (p=0.3) and ``mod7`` (p=0.5),
as the source's global ``nn.Dropout = nn.Dropout2d`` made it (not patched here).

Strides for an input of size H: ``mod1`` H, ``pool2``/``mod2`` H/2, ``pool3``/``mod3`` H/4,
``mod4`` (first block strided) … ``mod7`` H/8, with dilation 2 in ``mod5`` and 4 in ``mod6``/``mod7``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

#: Residual blocks per stage ``mod2`` … ``mod7``.
STRUCTURE = (3, 3, 6, 3, 1, 1)
#: Internal channels of each stage's blocks (two entries: basic block; three: bottleneck).
CHANNELS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
#: ``(stride of the first block, dilation, dropout)`` per stage ``mod2`` … ``mod7`` (``dilation=True``).
STAGE_GEOMETRY = ((1, 1, None), (1, 1, None), (2, 1, None), (1, 2, None), (1, 4, 0.3), (1, 4, 0.5))


class BNReLU(nn.Sequential):
    """``BatchNorm2d → ReLU`` as one ``Sequential`` (NVIDIA's ``bnrelu``; state-dict keys ``0.*``)."""

    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """Bias-free conv; a 3×3 is padded by its dilation (size kept at stride 1)."""
    padding = dilation if kernel_size == 3 else 0
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     bias=False)


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block: ``a = bn1(x)``; ``out = convs(a) + (proj_conv(a) or x)``.

    ``channels`` of length 2 gives the basic block ``conv3×3(stride) → BN-ReLU → conv3×3``; of
    length 3 the bottleneck ``conv1×1(stride) → BN-ReLU → conv3×3 → BN-ReLU → [Dropout2d] → conv1×1``.
    Every 3×3 conv has the block's dilation. ``proj_conv`` (1×1, strided) exists iff the stride is
    not 1 or the channel count changes. Input (B, in_channels, h, w) → (B, channels[-1], h/stride, w/stride).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], stride: int = 1, dilation: int = 1,
                 dropout: float | None = None):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must have 2 (basic) or 3 (bottleneck) entries, got {list(channels)}")
        self.bn1 = BNReLU(in_channels)
        if len(channels) == 2:
            layers = [("conv1", _conv(in_channels, channels[0], 3, stride, dilation)),
                      ("bn2", BNReLU(channels[0])),
                      ("conv2", _conv(channels[0], channels[1], 3, 1, dilation))]
        else:
            layers = [("conv1", _conv(in_channels, channels[0], 1, stride)),
                      ("bn2", BNReLU(channels[0])),
                      ("conv2", _conv(channels[0], channels[1], 3, 1, dilation)),
                      ("bn3", BNReLU(channels[1]))]
            if dropout is not None:
                layers.append(("dropout", nn.Dropout2d(dropout)))
            layers.append(("conv3", _conv(channels[1], channels[2], 1)))
        self.convs = nn.Sequential(OrderedDict(layers))
        needs_projection = stride != 1 or in_channels != channels[-1]
        self.proj_conv = _conv(in_channels, channels[-1], 1, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.bn1(x)
        shortcut = self.proj_conv(activated) if self.proj_conv is not None else x
        return self.convs(activated) + shortcut


def wider_resnet38_modules() -> OrderedDict[str, nn.Module]:
    """The trunk modules as DeepWV3Plus registers them: ``mod1`` … ``mod7``, ``pool2``, ``pool3``.

    Run them as ``m2 = mod2(pool2(mod1(x)))`` (stride 2, 128 channels) and
    ``mod7(mod6(mod5(mod4(mod3(pool3(m2))))))`` (stride 8, 4096 channels).
    """
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    modules["mod1"] = nn.Sequential(OrderedDict(conv1=_conv(3, 64, 3)))
    in_channels = 64
    for index, (blocks, channels, (stride, dilation, dropout)) in enumerate(
            zip(STRUCTURE, CHANNELS, STAGE_GEOMETRY)):
        stage = OrderedDict()
        for block in range(blocks):
            stage[f"block{block + 1}"] = IdentityResidualBlock(
                in_channels, channels, stride=stride if block == 0 else 1, dilation=dilation, dropout=dropout)
            in_channels = channels[-1]
        modules[f"mod{index + 2}"] = nn.Sequential(stage)
    modules["pool2"] = nn.MaxPool2d(3, stride=2, padding=1)
    modules["pool3"] = nn.MaxPool2d(3, stride=2, padding=1)
    return modules
