"""The conventions every part of oodseg shares, each defined once (SPEC §0).

- Label values: :data:`VOID` (255) marks pixels that are ignored in training and evaluation;
  :data:`OUTLIER` (254) marks pasted outlier / anomaly pixels in a trainId map; OoD label maps
  hold :data:`INLIER` (0), :data:`ANOMALY` (1) and :data:`VOID`.
- Which model output holds the logits: :func:`model_logits` (used by training AND scoring).
- Resizing logits and score maps to the label size: :func:`resize_logits`, :func:`resize_map`
  (bilinear, ``align_corners=False`` unless the model upsamples its own logits otherwise, SPEC §8).
- Frame → tensor: :func:`image_to_tensor`.

torch is imported by the functions that need it, so the label values cost no torch import.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from oodseg.errors import OodsegError

if TYPE_CHECKING:
    import torch

#: label value of ignored ("void") pixels
VOID = 255
#: label value of pasted outlier / anomaly pixels in a trainId map
OUTLIER = 254
#: OoD label values of in-distribution and anomalous pixels
INLIER, ANOMALY = 0, 1

#: ImageNet mean and std of RGB images in [0, 1] (the networks' input normalisation; transformers' image processors')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: keys of a model's output mapping that hold the segmentation logits, in order of preference
LOGITS_KEYS = ("logits", "out")


def model_logits(output: object) -> torch.Tensor:
    """The logits tensor of a model's output, by one rule for training and scoring alike.

    A tensor is the logits; a mapping gives its ``"logits"`` entry, else its ``"out"`` entry
    (torchvision's convention), else its only entry; a tuple/list gives its first element.
    A mapping with several entries and neither key is refused: guessing (say the auxiliary
    head's output) would train on one tensor and score another.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and output:
        key = next((k for k in LOGITS_KEYS if k in output), None)
        if key is None and len(output) == 1:
            key = next(iter(output))
        if key is None:
            raise OodsegError(f"model output: a mapping needs a {' or '.join(map(repr, LOGITS_KEYS))} entry "
                              f"holding the logits, got keys {', '.join(map(repr, output))}")
        return model_logits(output[key])
    if isinstance(output, (tuple, list)) and output:
        return model_logits(output[0])
    raise OodsegError(f"model output: expected logits, a dict with 'logits' or 'out', or a tuple, "
                      f"got {type(output).__name__}")


def resize_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """(B, C, h, w) logits → (B, C, H, W), bilinear; unchanged when the size matches.

    ``align_corners=False`` (SPEC §0) unless a model imported from elsewhere upsamples its own
    logits with ``align_corners=True`` (SPEC §8: its scores are upsampled the same way).
    """
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def resize_map(score: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """(B, h, w) score map → (B, H, W), bilinear (see :func:`resize_logits`); unchanged when the size matches."""
    return resize_logits(score[:, None], size, align_corners)[:, 0]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB frame → float32 ``(3, H, W)`` in [0, 1]."""
    import torch

    return torch.tensor(image, dtype=torch.float32).permute(2, 0, 1).div_(255.0).contiguous()
