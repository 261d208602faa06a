"""Pixel-level OoD metrics (SPEC §4.1): AP, AUROC, FPR95, best F1 — exact or streaming.

This is the ``exact`` protocol (the official SegmentMeIfYouCan binned computation is
:mod:`oodseg.metrics.smiyc`). Conventions (SegmentMeIfYouCan / Fishyscapes, scikit-learn):
pixels of label 255 (and outside an optional ROI) are ignored; the threshold sweeps the distinct score values
from high to low, a pixel is positive when ``score >= threshold``, tied scores enter
together.

* ``AP = sum_i (R_i - R_{i-1}) P_i`` (step sum, equals ``sklearn.metrics.average_precision_score``),
* ``AUROC`` = trapezoid over (FPR, TPR) starting at (0, 0) (equals ``roc_auc_score``),
* ``FPR95`` = FPR at the first threshold where TPR >= 0.95 (``roc_curve(drop_intermediate=False)``),
* ``best_F1`` = max over thresholds of ``2TP / (2TP + FP + FN)``, ``best_F1_threshold`` its threshold,
  ``TPR95_threshold`` the threshold of the FPR95 point.

Metrics that need both classes are ``nan`` when one is missing. Modes and memory: see
:mod:`oodseg.metrics.tally`. Exact: ~5 bytes per pixel kept, ~25 bytes per pixel while
computing (sort). Streaming: 16 MiB whatever the pixel count, exact for float16 or
quantised scores (metrics and thresholds, of either sign: bins are reported by their grid
value, :func:`oodseg.metrics.tally.bin_value`); otherwise pixels within one bin (relative width 4.9e-4) count as tied,
which moves AUROC by at most half the fraction of (anomaly, inlier) pairs sharing a bin —
below 1e-3 for probabilities, logits, energies (heavy tails included) in our tests. Scores
that vary only in the 4th significant digit (e.g. all in [0.9999, 1]) lose resolution:
pass them as ``1 - p`` (as the ``msp`` score does), or use exact mode.
"""
from __future__ import annotations

import numpy as np

from oodseg.errors import OodsegError, check_choice
from oodseg.conventions import VOID
from oodseg.metrics.checks import check_mask, check_ood_label, check_scores
from oodseg.metrics.state import MetricState
from oodseg.metrics.tally import ScoreTally

AGGREGATES = ("pooled", "per_image")
_PER_IMAGE_KEYS = ("AP", "AUROC", "FPR95")


def sweep_metrics(thresholds: np.ndarray, inlier: np.ndarray, anomaly: np.ndarray) -> dict:
    """Metrics from per-threshold counts sorted from high to low threshold.

    ``thresholds`` (G,) distinct values, descending; ``inlier``/``anomaly`` (G,) pixel counts
    at exactly that value. Returns AP, AUROC, FPR95, best_F1, best_F1_threshold,
    TPR95_threshold, n_pixels, n_anomaly.
    """
    tps = np.cumsum(anomaly, dtype=np.int64)
    fps = np.cumsum(inlier, dtype=np.int64)
    n_pos = int(tps[-1]) if tps.size else 0
    n_neg = int(fps[-1]) if fps.size else 0
    out = {"AP": float("nan"), "AUROC": float("nan"), "FPR95": float("nan"), "best_F1": float("nan"),
           "best_F1_threshold": float("nan"), "TPR95_threshold": float("nan"),
           "n_pixels": n_pos + n_neg, "n_anomaly": n_pos}
    if n_pos == 0:
        return out
    precision = tps / (tps + fps)
    recall = tps / n_pos
    out["AP"] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    f1 = 2 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))
    out["best_F1"], out["best_F1_threshold"] = float(f1[best]), float(thresholds[best])
    first95 = int(np.searchsorted(recall >= 0.95, True))  # recall is non-decreasing
    out["TPR95_threshold"] = float(thresholds[first95])
    if n_neg == 0:
        return out
    fpr = np.concatenate(([0.0], fps / n_neg))
    tpr = np.concatenate(([0.0], recall))
    out["AUROC"] = float(np.trapezoid(tpr, fpr))
    out["FPR95"] = float(fpr[first95 + 1])
    return out


def _thin(x: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices into a curve with non-decreasing ``x``: spread by index and by x."""
    n = x.size
    if n <= max_points:
        return np.arange(n)
    half = max(max_points // 2, 1)
    by_index = np.linspace(0, n - 1, half).round().astype(np.int64)
    by_x = np.minimum(np.searchsorted(x, np.linspace(x[0], x[-1], max_points - half)), n - 1)
    return np.unique(np.concatenate((by_index, by_x, [0, n - 1])))[:max_points]


def _histogram(values: np.ndarray, inlier: np.ndarray, anomaly: np.ndarray, bins: int) -> dict:
    """Densities of inlier and anomaly scores over ``bins`` equal bins spanning the 0.1%-99.9% quantiles."""
    order = np.argsort(values)
    v, total = values[order], (inlier + anomaly)[order]
    cum = np.cumsum(total)
    lo = v[min(np.searchsorted(cum, 0.001 * cum[-1]), v.size - 1)]
    hi = v[min(np.searchsorted(cum, 0.999 * cum[-1]), v.size - 1)]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    width = edges[1] - edges[0]
    out = {"edges": edges.tolist()}
    for name, counts in (("inlier", inlier), ("anomaly", anomaly)):
        h = np.bincount(idx, weights=counts.astype(np.float64), minlength=bins)
        out[name] = (h / (h.sum() * width) if h.sum() > 0 else h).tolist()
    return out


class PixelMetrics(MetricState):
    """Pooled (or per-image) pixel metrics with an update/compute/merge state.

    ``mode``: ``"exact"`` or ``"streaming"`` (see module doc). ``aggregate``: ``"pooled"``
    (SMIYC, Fishyscapes) or ``"per_image"`` (StreetHazards: AP, AUROC and FPR95 computed
    per image with the exact sweep and averaged over images that contain both classes;
    ``best_F1``, its threshold and :meth:`curves` stay pooled). ``bits``: streaming resolution.
    """

    SETTINGS = ("mode", "aggregate")

    def __init__(self, mode: str = "exact", aggregate: str = "pooled", bits: int = 20):
        check_choice("aggregate", aggregate, AGGREGATES)
        self.mode, self.aggregate = mode, aggregate
        self.add_state("tally", ScoreTally(channels=2, mode=mode, bits=bits), "merge")
        self.add_state("n_frames", 0, "sum")
        self.add_state("per_image", [], "cat")  # (AP, AUROC, FPR95) of two-class images

    def update(self, score, label, roi=None) -> None:
        """Add frames: ``score`` float (H,W)|(B,H,W); ``label`` 0/1/255 same shape; ``roi`` optional bool mask."""
        scores = check_scores(score)
        labels = check_ood_label(label, scores.shape)
        valid = labels != VOID
        if roi is not None:
            valid &= check_mask(roi, scores.shape, "roi")
        for s, y, v in zip(scores, labels, valid):
            if not v.all():
                s, y = s[v], y[v]
            self.tally.add(s, y)
            if self.aggregate == "per_image":
                self._add_image(s, y)
        self.n_frames += scores.shape[0]

    def _add_image(self, scores: np.ndarray, labels: np.ndarray) -> None:
        single = ScoreTally(channels=2, mode="exact")
        single.add(scores, labels)
        values, counts, _ = single.groups()
        m = sweep_metrics(values, counts[:, 0], counts[:, 1])
        if not np.isnan(m["AUROC"]):
            self.per_image.append(tuple(m[k] for k in _PER_IMAGE_KEYS))

    def compute(self) -> dict:
        """``AP, AUROC, FPR95, best_F1, best_F1_threshold, TPR95_threshold, n_pixels, n_anomaly, n_frames``."""
        values, counts, _ = self.tally.groups()
        out = sweep_metrics(values, counts[:, 0], counts[:, 1])
        if self.aggregate == "per_image":
            rows = np.array(self.per_image, dtype=np.float64).reshape(-1, len(_PER_IMAGE_KEYS))
            for i, key in enumerate(_PER_IMAGE_KEYS):
                out[key] = float(rows[:, i].mean()) if len(rows) else float("nan")
            out["n_images_evaluated"] = len(rows)
        out["n_frames"] = self.n_frames
        return out

    def curves(self, max_points: int = 512, hist_bins: int = 50) -> dict:
        """Plot data: ``{"pr": {recall, precision}, "roc": {fpr, tpr}, "hist": {edges, inlier, anomaly}}``.

        PR and ROC go from high to low threshold (ROC starts at (0, 0)), thinned to at most
        ``max_points`` points; ``hist`` holds densities over the 0.1%-99.9% score range.
        """
        values, counts, _ = self.tally.groups()
        inlier, anomaly = counts[:, 0], counts[:, 1]
        if anomaly.sum() == 0 or inlier.sum() == 0:
            raise OodsegError("curves: need both inlier and anomaly pixels")
        tps, fps = np.cumsum(anomaly), np.cumsum(inlier)
        recall, precision = tps / tps[-1], tps / (tps + fps)
        fpr = np.concatenate(([0.0], fps / fps[-1]))
        tpr = np.concatenate(([0.0], recall))
        pr_idx, roc_idx = _thin(recall, max_points), _thin(fpr, max_points)
        return {"pr": {"recall": recall[pr_idx].tolist(), "precision": precision[pr_idx].tolist()},
                "roc": {"fpr": fpr[roc_idx].tolist(), "tpr": tpr[roc_idx].tolist()},
                "hist": _histogram(values, inlier, anomaly, hist_bins)}


def pixel_metrics(scores, labels, roi=None, mode: str = "exact", aggregate: str = "pooled") -> dict:
    """One-shot :class:`PixelMetrics` on score maps (H,W)|(B,H,W) and 0/1/255 labels."""
    metrics = PixelMetrics(mode=mode, aggregate=aggregate)
    metrics.update(scores, labels, roi)
    return metrics.compute()
