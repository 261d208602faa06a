"""Meta-OoD segment-wise detection errors (SPEC §4.5): FP, FN, TP, F1 and the road miss rate ε.

At entropy threshold t the OoD segment predictions are the 8-connected components of
``entropy >= t`` after dropping pixels on void (255) — as the authors' code does
(``seg[gt == 255] = 0`` before the segment search). Optionally, segments that a meta
classifier removed (given as a boolean pixel mask of their pixels) are dropped; removing
whole components leaves the other components unchanged, so they are labelled afresh.

* FP = predicted segments containing no GT OoD pixel (label 1);
* FN = GT OoD components (8-connected components of label 1) containing no predicted pixel;
* TP = the other GT components; ``F1 = 2TP / (2TP + FP + FN)``;
* road miss rate ``ε = 1 − |∪(Ẑ_in ∩ Z_in)| / |∪ Z_in|`` over the dataset, where ``Z_in`` are
  the pixels annotated in-distribution (label 0 — on LostAndFound exactly the annotated
  road/free space, everything else is void) and ``Ẑ_in`` the pixels predicted
  in-distribution (not in a kept OoD segment). So ε = the fraction of label-0 pixels
  covered by kept OoD segments (Meta-OoD eq. (8): "the fraction of actual road pixels in
  the whole dataset which are incorrectly identified").
"""
from __future__ import annotations

import numpy as np

from oodseg.errors import OodsegError
from oodseg.metrics.component import label_components
from oodseg.conventions import VOID
from oodseg.metrics.checks import check_mask, check_ood_label, check_scores
from oodseg.metrics.state import MetricState

META_OOD_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
_COUNT_KEYS = ("TP", "FP", "FN", "road_pixels", "road_missed")


def f1_score(tp: int, fp: int, fn: int) -> float:
    """``2TP / (2TP + FP + FN)``; ``nan`` when all are 0."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else float("nan")


def meta_ood_errors(entropy, label, threshold: float, removed_mask=None) -> dict:
    """Detection counts of one or more frames at one entropy threshold.

    ``entropy`` (H,W)|(B,H,W) normalised entropy (or any score, OoD when ``>= threshold``);
    ``label`` 0/1/255 of the same shape; ``removed_mask`` optional bool mask of pixels of
    segments removed by meta classification. Returns ``{"TP", "FP", "FN", "road_pixels",
    "road_missed"}`` (integers; ε = road_missed / road_pixels).
    """
    scores = check_scores(entropy, "entropy")
    labels = check_ood_label(label, scores.shape)
    removed = None if removed_mask is None else check_mask(removed_mask, scores.shape, "removed_mask")
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    for i, (s, y) in enumerate(zip(scores, labels)):
        predicted = (s >= threshold) & (y != VOID)
        if removed is not None:
            predicted &= ~removed[i]
        gt_mask = y == 1
        pred_ids, n_pred = label_components(predicted)
        gt_ids, n_gt = label_components(gt_mask)
        pred_hits_gt = np.bincount(pred_ids[gt_mask], minlength=n_pred + 1)[1:] > 0
        gt_hit = np.bincount(gt_ids[predicted], minlength=n_gt + 1)[1:] > 0
        road = y == 0
        counts["TP"] += int(gt_hit.sum())
        counts["FN"] += int(n_gt - gt_hit.sum())
        counts["FP"] += int(n_pred - pred_hits_gt.sum())
        counts["road_pixels"] += int(road.sum())
        counts["road_missed"] += int((road & predicted).sum())
    return counts


class DetectionMetrics(MetricState):
    """Meta-OoD detection errors per entropy threshold, accumulated over frames."""

    SETTINGS = ("thresholds",)

    def __init__(self, thresholds=META_OOD_THRESHOLDS):
        self.thresholds = [float(t) for t in thresholds]
        self.add_state("counts", np.zeros((len(self.thresholds), len(_COUNT_KEYS)), dtype=np.int64), "sum")

    def update(self, entropy, label, removed_masks=None) -> None:
        """Add frames; ``removed_masks`` optional: one bool pixel mask per threshold (a sequence or a dict by t)."""
        if removed_masks is not None and len(removed_masks) != len(self.thresholds):
            raise OodsegError(f"removed_masks: expected one mask per threshold ({len(self.thresholds)})")
        for i, t in enumerate(self.thresholds):
            removed = None
            if removed_masks is not None:
                removed = removed_masks[t] if isinstance(removed_masks, dict) else removed_masks[i]
            row = meta_ood_errors(entropy, label, t, removed)
            self.counts[i] += [row[k] for k in _COUNT_KEYS]

    def compute(self) -> dict:
        """``{"per_threshold": [{"t", "TP", "FP", "FN", "F1", "miss_rate"}, ...]}``, one row per threshold."""
        rows = []
        for t, c in zip(self.thresholds, self.counts):
            tp, fp, fn, road, missed = (int(v) for v in c)
            rows.append({"t": t, "TP": tp, "FP": fp, "FN": fn, "F1": f1_score(tp, fp, fn),
                         "miss_rate": missed / road if road else float("nan")})
        return {"per_threshold": rows}
