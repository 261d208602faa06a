"""Semantic segmentation quality with an outlier class (SPEC §4.4): mIoU, mIoU at t, open-mIoU.

Labels are trainIds ``0..K-1``, ``255`` ignored and ``ood_label`` (default 254) for GT
outlier pixels; predictions are trainIds ``0..K-1``; the optional anomaly score marks a
pixel as predicted "OoD" when ``score >= t``.

* ``mIoU``: closed-set IoU over the K classes from the confusion matrix; GT outlier pixels
  are ignored; classes with an empty union are left out of the mean.
* ``mIoU_at``: Meta-OoD fig. 6 — pixels with ``score >= t`` are predicted OoD; per inlier
  class k: ``TP_k`` = GT k predicted k (not OoD), ``FP_k`` = predicted k (not OoD) with GT ≠ k
  (GT outliers included), ``FN_k`` = GT k predicted anything else (OoD included);
  ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``, averaged over the K inlier classes.
* ``open_mIoU`` (Grcić et al.): the same at the threshold where the TPR on GT outlier
  pixels first reaches 95% (sweeping t from high to low).

Threshold sweeps use a :class:`~oodseg.metrics.tally.ScoreTally` with 3K channels
(predicted class × {correct, wrong inlier, GT outlier}): exact (~5 bytes/pixel) or
streaming (``2**bits · 3K`` int64; 16 bits → 30 MiB for K = 19, thresholds at bin edges).
"""
from __future__ import annotations

import numpy as np

from oodseg.errors import OodsegError
from oodseg.conventions import VOID
from oodseg.metrics.checks import as_batch, check_scores
from oodseg.metrics.state import MetricState
from oodseg.metrics.tally import ScoreTally


def iou_per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """IoU per class; ``nan`` where ``TP + FP + FN = 0``."""
    denom = (tp + fp + fn).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def _mean(iou: np.ndarray) -> float:
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def _int_map(x, name: str) -> np.ndarray:
    arr = as_batch(x, name)
    if not np.issubdtype(arr.dtype, np.integer):
        raise OodsegError(f"{name}: expected integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


class SegmentationMetrics(MetricState):
    """Confusion-matrix mIoU plus threshold sweeps over an anomaly score (update/compute/merge).

    ``num_classes``: K inlier classes. ``ood_label``: label value of GT outliers.
    ``ood_thresholds``: thresholds t for ``mIoU_at`` in :meth:`compute`. ``mode``/``bits``:
    the score tally (see :mod:`oodseg.metrics.tally`).
    """

    SETTINGS = ("num_classes", "ood_label")

    def __init__(self, num_classes: int = 19, ood_label: int = 254, ood_thresholds=(), mode: str = "exact",
                 bits: int = 16):
        if not 0 < num_classes < ood_label or ood_label == VOID:
            raise OodsegError(f"num_classes/ood_label: need 0 < num_classes <= ood_label != 255, "
                              f"got {num_classes}/{ood_label}")
        self.num_classes, self.ood_label = num_classes, ood_label
        self.ood_thresholds = [float(t) for t in ood_thresholds]
        self.add_state("confusion", np.zeros((num_classes, num_classes), dtype=np.int64), "sum")  # rows GT
        self.add_state("tally", ScoreTally(channels=3 * num_classes, mode=mode, bits=bits), "merge")
        self.with_scores: bool | None = None

    def update(self, prediction, label, score=None) -> None:
        """Add frames: ``prediction`` trainIds (B,H,W), ``label`` trainIds/255/ood_label, optional ``score``."""
        pred = _int_map(prediction, "prediction")
        gt = _int_map(label, "label")
        if gt.shape != pred.shape:
            raise OodsegError(f"label: shape {gt.shape} does not match prediction shape {pred.shape}")
        k = self.num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise OodsegError(f"prediction: class ids outside 0..{k - 1}")
        inlier = (gt >= 0) & (gt < k)
        outlier = gt == self.ood_label
        if not (inlier | outlier | (gt == VOID)).all():
            raise OodsegError(f"label: unknown values (expected 0..{k - 1}, {self.ood_label} outlier, 255 void)")
        if self.with_scores is None:
            self.with_scores = score is not None
        elif self.with_scores != (score is not None):
            raise OodsegError("score: give it with every update or with none")
        self.confusion += np.bincount(gt[inlier] * k + pred[inlier], minlength=k * k).reshape(k, k)
        if score is None:
            return
        scores = check_scores(score)
        if scores.shape != pred.shape:
            raise OodsegError(f"score: shape {scores.shape} does not match prediction shape {pred.shape}")
        valid = inlier | outlier
        group = np.where(outlier, 2, np.where(gt == pred, 0, 1))
        self.tally.add(scores[valid], (group * k + pred)[valid])

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add ``other``'s pixels (same settings, both with scores or both without); returns self."""
        if None not in (self.with_scores, other.with_scores) and self.with_scores != other.with_scores:
            raise OodsegError("merge: one state has scores, the other not")
        super().merge(other)
        self.with_scores = self.with_scores if self.with_scores is not None else other.with_scores
        return self

    def _iou_with_ood(self, kept: np.ndarray) -> np.ndarray:
        """Per-class IoU given the counts (3K,) of pixels *not* predicted OoD per tally channel."""
        k = self.num_classes
        tp = kept[:k]
        fp = kept[k:2 * k] + kept[2 * k:]
        fn = self.confusion.sum(axis=1) - tp
        return iou_per_class(tp, fp, fn)

    def compute(self) -> dict:
        """``mIoU, IoU_per_class`` and, with scores: ``mIoU_at [{t, mIoU}], open_mIoU, open_threshold, open_IoU_per_class``."""
        tp = np.diag(self.confusion)
        iou = iou_per_class(tp, self.confusion.sum(axis=0) - tp, self.confusion.sum(axis=1) - tp)
        out = {"mIoU": _mean(iou), "IoU_per_class": iou.tolist(), "n_pixels": int(self.confusion.sum())}
        if not self.with_scores:
            return out
        values, counts, _ = self.tally.groups()
        total = counts.sum(axis=0)
        cum = np.cumsum(counts, axis=0)  # pixels with score >= values[j], per channel

        def kept_at(n_groups_ood: int) -> np.ndarray:
            return total - (cum[n_groups_ood - 1] if n_groups_ood > 0 else 0)

        out["mIoU_at"] = []
        for t in self.ood_thresholds:
            n_ood_groups = int(np.searchsorted(-values, -t, side="right"))  # groups with value >= t
            out["mIoU_at"].append({"t": t, "mIoU": _mean(self._iou_with_ood(kept_at(n_ood_groups)))})
        k = self.num_classes
        outliers = cum[:, 2 * k:].sum(axis=1)
        out["open_mIoU"], out["open_threshold"], out["open_IoU_per_class"] = float("nan"), float("nan"), []
        if outliers.size and outliers[-1] > 0:
            j = int(np.searchsorted(outliers / outliers[-1] >= 0.95, True))
            open_iou = self._iou_with_ood(kept_at(j + 1))
            out.update(open_mIoU=_mean(open_iou), open_threshold=float(values[j]),
                       open_IoU_per_class=open_iou.tolist())
        return out
