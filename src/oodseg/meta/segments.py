"""Segments for meta classification (SPEC §3): label maps of 8-connected components.

Two kinds:

- **threshold segments** (Meta-OoD): 8-connected components of ``score >= t`` (the paper
  thresholds the normalised entropy), optionally restricted to a ``valid`` mask (pixels on
  void are dropped before labelling, as the authors' code and
  :func:`oodseg.metrics.meta_ood_errors` do, so segments and detection counts agree);
- **class segments** (MetaSeg / PGN): 8-connected components of one predicted class, all
  classes together in one label map with unique ids.

A label map is int32 ``(H, W)``: 0 = no segment, ``1..n`` = segment ids.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from oodseg.errors import OodsegError
from oodseg.metrics.component import EIGHT_CONNECTED, label_components

#: The 8 neighbour offsets (dh, dw) of a pixel.
NEIGHBOUR_OFFSETS = tuple((dh, dw) for dh in (-1, 0, 1) for dw in (-1, 0, 1) if (dh, dw) != (0, 0))


def threshold_segments(score: np.ndarray, threshold: float, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """8-connected components of ``score >= threshold`` (and ``valid``): ``(ids int32 (H, W), n)``."""
    score = np.asarray(score)
    if score.ndim != 2:
        raise OodsegError(f"score: expected a (H, W) map, got shape {score.shape}")
    mask = score >= threshold
    if valid is not None:
        if valid.shape != score.shape:
            raise OodsegError(f"valid: shape {valid.shape} does not match score shape {score.shape}")
        mask &= valid
    return label_components(mask)


def class_segments(prediction: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """8-connected components of each predicted class in one map.

    ``prediction`` integer (H, W) class ids (>= 0). Returns ``(ids int32 (H, W), n,
    segment_class int64 (n,))``; every pixel belongs to a segment. One ``ndimage.label`` per
    class present, on that class's bounding box only.
    """
    prediction = np.asarray(prediction)
    if prediction.ndim != 2 or not np.issubdtype(prediction.dtype, np.integer):
        raise OodsegError(f"prediction: expected an integer (H, W) class map, got {prediction.dtype} {prediction.shape}")
    if prediction.size and prediction.min() < 0:
        raise OodsegError("prediction: negative class ids")
    ids = np.zeros(prediction.shape, dtype=np.int32)
    classes: list[np.ndarray] = []
    n = 0
    boxes = ndimage.find_objects(prediction.astype(np.int64) + 1)
    for c, box in enumerate(boxes):
        if box is None:
            continue
        local, count = ndimage.label(prediction[box] == c, structure=EIGHT_CONNECTED)
        if count == 0:
            continue
        inside = local > 0
        ids[box][inside] = local[inside] + n
        classes.append(np.full(count, c, dtype=np.int64))
        n += count
    segment_class = np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)
    return ids, int(n), segment_class


def interior_mask(ids: np.ndarray) -> np.ndarray:
    """bool (H, W): segment pixels whose 8 neighbours all belong to the same segment.

    Pixels on the image border have neighbours outside the image and so are boundary.
    """
    interior = ids > 0
    interior[0, :] = interior[-1, :] = False
    interior[:, 0] = interior[:, -1] = False
    core = ids[1:-1, 1:-1]
    inner = interior[1:-1, 1:-1]
    H, W = ids.shape
    for dh, dw in NEIGHBOUR_OFFSETS:
        inner &= ids[1 + dh:H - 1 + dh, 1 + dw:W - 1 + dw] == core
    return interior
