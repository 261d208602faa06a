"""ModelAdapter: hooks the final 1×1 classifier conv of any segmentation ``nn.Module``.

The adapter returns a :class:`SegOutput` holding everything a score needs — logits at
the head's resolution, the head's input features ``z``, its weight and bias, and (when
the head is fed by ``conv3×3 → BN → ReLU``) the inputs of that block — so that no
scoring method has to know a network's internals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class HeadBlock:
    """The ``conv(k×k) → BN → ReLU`` block feeding the final 1×1 head (for second-to-last-layer PGN).

    Attributes:
        input: (B, K, H_in, W_in) input of the k×k conv.
        conv_weight: (F, K, kh, kw) weight of that conv.
        stride, padding, dilation: the conv's geometry, each a pair of ints.
        bn_scale: (F,) eval-mode BN scale ``γ / sqrt(running_var + eps)``.
        pre_relu: (B, F, h, w) BN output before the ReLU (the ReLU gate is ``pre_relu > 0``).
    """

    input: torch.Tensor
    conv_weight: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    bn_scale: torch.Tensor
    pre_relu: torch.Tensor


@dataclass
class SegOutput:
    """One forward pass seen through the adapter.

    Attributes:
        logits: (B, C, h, w) classifier output at the head's own resolution.
        features: (B, D, h, w) input ``z`` of the final 1×1 conv (pixel-aligned with ``logits``),
            or None when only logits are known.
        weight: (C, D) the 1×1 head's weight, or None.
        bias: (C,) the head's bias, or None (also None when the head has no bias).
        image_size: (H, W) of the input images, or None when unknown.
        block: the ``conv → BN → ReLU`` block feeding the head, when present and captured.
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    image_size: tuple[int, int] | None = None
    block: HeadBlock | None = None

    def upsampled_logits(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, H, W) logits bilinearly upsampled (``align_corners=False``) to ``size`` or the image size."""
        size = size or self.image_size
        if size is None or tuple(size) == tuple(self.logits.shape[-2:]):
            return self.logits
        return F.interpolate(self.logits, size=tuple(size), mode="bilinear", align_corners=False)
