"""Ground-truth targets of segments (SPEC §3): segment IoU (meta regression) and IoU > 0 (meta classification).

For segment k of class c (a predicted class for MetaSeg segments; the anomaly class 1 for
Meta-OoD threshold segments), ``G_k`` = the union of the 8-connected components of
``gt == c`` that share a pixel with k, and ``IoU(k) = |k ∩ G_k| / |k ∪ G_k|``.
Void pixels (255) are left out of k (a segment made only of void pixels has no target:
NaN). For Meta-OoD segments ``IoU > 0`` is exactly "k touches a GT OoD pixel" (eq. 6),
i.e. a true positive OoD prediction; ``IoU = 0`` is a false positive.
"""
from __future__ import annotations

import numpy as np

from oodseg.errors import OodsegError
from oodseg.metrics.component import label_components
from oodseg.conventions import VOID


def segment_iou(ids: np.ndarray, n: int, segment_class: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float64 (n,) IoU of every segment with ``G_k`` (module docstring); NaN for all-void segments.

    ``ids`` int (H, W) label map with ids 1..n, ``segment_class`` (n,) class of each segment,
    ``gt`` integer (H, W) ground truth (class ids, 255 void).
    """
    ids, gt = np.asarray(ids), np.asarray(gt)
    segment_class = np.asarray(segment_class, dtype=np.int64)
    if gt.shape != ids.shape:
        raise OodsegError(f"label: shape {gt.shape} does not match the segment map {ids.shape}")
    if segment_class.shape != (n,):
        raise OodsegError(f"segment_class: expected shape ({n},), got {segment_class.shape}")
    if n == 0:
        return np.zeros(0)
    valid = gt != VOID
    size = np.bincount(ids[valid].ravel(), minlength=n + 1)[1:].astype(np.float64)
    # GT components of every class that some segment has, numbered consecutively over classes.
    gt_ids = np.zeros(gt.shape, dtype=np.int64)
    n_gt = 0
    for c in np.unique(segment_class):
        component, count = label_components(gt == c)
        gt_ids[component > 0] = component[component > 0] + n_gt
        n_gt += count
    gt_size = np.bincount(gt_ids.ravel(), minlength=n_gt + 1).astype(np.float64)
    # (segment, GT component) pairs overlapping on pixels where the GT class is the segment's class.
    same = (ids > 0) & (gt_ids > 0)
    same[same] = segment_class[ids[same] - 1] == gt[same]
    pairs = np.unique(ids[same].astype(np.int64) * (n_gt + 1) + gt_ids[same], return_counts=True)
    segment, component = np.divmod(pairs[0], n_gt + 1)
    intersection = np.bincount(segment, weights=pairs[1], minlength=n + 1)[1:]
    gt_union = np.bincount(segment, weights=gt_size[component], minlength=n + 1)[1:]
    union = size + gt_union - intersection
    return np.divide(intersection, union, out=np.full(n, np.nan), where=size > 0)
