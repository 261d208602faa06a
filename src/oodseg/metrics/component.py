"""Component-level metrics of SegmentMeIfYouCan (SPEC §4.2): sIoU, PPV and mean F1.

Per frame, with θ the pixel threshold (the best-F1 pixel threshold, chosen by the caller):

1. predicted mask = ``score > θ`` (strict) with predicted pixels on void (255) dropped;
2. 8-connected components (``scipy.ndimage.label`` with a 3×3 structure) of the GT
   anomaly pixels (label 1) and of the predicted mask;
3. predicted components of fewer than ``min_pred`` pixels are dropped, GT components of
   fewer than ``min_gt`` pixels become void (anomaly track 500/100, obstacle 50/10);
4. both are restricted to the remaining ROI (label < 255) without relabelling;
5. ``sIoU(k) = |k ∩ P̂(k)| / |(k ∪ P̂(k)) \\ A(k)|`` with P̂(k) the union of predicted
   components overlapping GT component k and A(k) the pixels of the other GT components;
   ``PPV(k̂) = |k̂ ∩ K(k̂)| / |k̂|`` with K(k̂) the union of GT components overlapping k̂;
6. per τ: TP = #{k: sIoU ≥ τ}, FN = #{k: sIoU < τ}, FP = #{k̂: PPV < τ}, summed over the
   dataset; ``F1_τ = 2TP / (2TP + FN + FP)``; mean F1 = mean over τ; sIoU (PPV) = mean
   over all GT (predicted) components of the dataset.

This is what the current official ``road-anomaly-benchmark`` code computes (its FP uses
the precision ``prec_pred``). Everything is vectorised: one ``bincount`` over
(GT component, predicted component) pairs per frame, no loop over components.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from oodseg.errors import OodsegError, check_choice
from oodseg.conventions import VOID
from oodseg.metrics.checks import check_ood_label, check_scores
from oodseg.metrics.state import MetricState

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
TRACK_MIN_SIZES = {"anomaly": (500, 100), "obstacle": (50, 10)}  # (min_pred, min_gt) in pixels
_DENSE_PAIRS = 1 << 22  # up to this many (GT, prediction) id pairs, count them with a dense bincount


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask: ``(ids int32 (H, W), count)``, 0 = background."""
    ids, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return ids, int(count)


def _component_ids(mask: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Component id (0 = none) of each flat index in ``pixels`` under ``mask`` (H, W), and the count.

    Labels only the bounding box of the mask (a component never leaves it): the same ids as
    :func:`label_components` on the whole frame, for a fraction of its cost when the mask is compact.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(pixels.size, np.int32), 0
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ids = np.zeros(mask.shape, np.int32)
    ids[box], count = label_components(mask[box])
    return ids.ravel()[pixels], count


def frame_component_scores(score: np.ndarray, label: np.ndarray, threshold: float,
                           min_pred: int, min_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """sIoU of every GT component and PPV of every predicted component of one frame.

    ``score`` float (H, W), ``label`` uint8 0/1/255 (H, W). Returns ``(sIoU (n_gt,), PPV (n_pred,))``
    for the components left in the ROI after the size filters, in id order. Only the pixels of the
    two masks enter the sums (every other pixel adds to no component).
    """
    gt_mask = label == 1
    pred_mask = (score > threshold) & (label != VOID)
    pixels = np.flatnonzero(gt_mask | pred_mask)  # never void: GT pixels are 1, predictions off void
    g, n_gt = _component_ids(gt_mask, pixels)
    p, n_pred = _component_ids(pred_mask, pixels)
    if min_pred > 0 and n_pred:
        keep = np.bincount(p, minlength=n_pred + 1) >= min_pred
        keep[0] = False
        p = np.where(keep, np.arange(n_pred + 1), 0).astype(p.dtype)[p]
    if min_gt > 0 and n_gt:
        small = np.bincount(g, minlength=n_gt + 1) < min_gt
        small[0] = False
        inside = ~small[g]  # pixels of small GT components become void: out of the ROI
        g, p = g[inside], p[inside]
    size_g = np.bincount(g, minlength=n_gt + 1)
    size_p = np.bincount(p, minlength=n_pred + 1)
    both = (g > 0) & (p > 0)
    pair = g[both].astype(np.int64) * (n_pred + 1) + p[both]
    if (n_gt + 1) * (n_pred + 1) <= _DENSE_PAIRS:
        counts = np.bincount(pair, minlength=(n_gt + 1) * (n_pred + 1))
        codes = np.flatnonzero(counts)
        inter = counts[codes]
    else:
        codes, inter = np.unique(pair, return_counts=True)
    pg, pp = np.divmod(codes, n_pred + 1)
    inter = inter.astype(np.float64)
    gt_in_pred = np.bincount(pp, weights=inter, minlength=n_pred + 1)  # |k̂ ∩ K(k̂)|
    intersection = np.bincount(pg, weights=inter, minlength=n_gt + 1)  # |k ∩ P̂(k)|
    pred_area = np.bincount(pg, weights=size_p[pp], minlength=n_gt + 1)  # |P̂(k)|
    other_gt = np.bincount(pg, weights=gt_in_pred[pp] - inter, minlength=n_gt + 1)  # |P̂(k) ∩ A(k)|
    union = size_g + pred_area - intersection - other_gt
    gt_present = np.flatnonzero(size_g[1:]) + 1
    pred_present = np.flatnonzero(size_p[1:]) + 1
    return intersection[gt_present] / union[gt_present], gt_in_pred[pred_present] / size_p[pred_present]


class ComponentMetrics(MetricState):
    """SMIYC component metrics accumulated over frames (update/compute/merge/all_reduce).

    ``track``: ``"anomaly"`` (min sizes 500/100) or ``"obstacle"`` (50/10); ``min_pred`` /
    ``min_gt`` override them (0 disables). ``thresholds_tau``: sIoU/PPV thresholds.
    The means add the frames' sums one after the other in frame order (by ``positions`` when every
    frame has one) as the official ``aggregate`` does, so any split into merged parts gives the same bits.
    """

    SETTINGS = ("min_pred", "min_gt", "thresholds_tau")

    def __init__(self, track: str = "anomaly", min_pred: int | None = None, min_gt: int | None = None,
                 thresholds_tau=np.linspace(0.25, 0.75, 11)):
        check_choice("track", track, sorted(TRACK_MIN_SIZES))
        default_pred, default_gt = TRACK_MIN_SIZES[track]
        self.track = track
        self.min_pred = default_pred if min_pred is None else int(min_pred)
        self.min_gt = default_gt if min_gt is None else int(min_gt)
        if self.min_pred < 0 or self.min_gt < 0:
            raise OodsegError("min_pred/min_gt: must be >= 0")
        self.thresholds_tau = np.asarray(thresholds_tau, dtype=np.float64)
        n = self.thresholds_tau.size
        for name in ("tp", "fn", "fp"):
            self.add_state(name, np.zeros(n, np.int64), "sum")
        self.add_state("frame_sums", [], "cat")  # per frame: (position | None, sum of sIoU, sum of PPV)
        for name in ("n_gt", "n_pred", "n_frames"):
            self.add_state(name, 0, "sum")

    def update(self, score, label, threshold: float, positions=None) -> None:
        """Add frames: ``score`` float (H,W)|(B,H,W), ``label`` 0/1/255 same shape, pixel ``threshold`` θ,
        ``positions`` optional int per frame (its place in the dataset)."""
        scores = check_scores(score)
        labels = check_ood_label(label, scores.shape)
        if not np.isfinite(threshold):
            raise OodsegError(f"threshold: must be finite, got {threshold}")
        positions = [None] * scores.shape[0] if positions is None else [int(p) for p in positions]
        if len(positions) != scores.shape[0]:
            raise OodsegError(f"positions: expected {scores.shape[0]} values, got {len(positions)}")
        tau = self.thresholds_tau[:, None]
        for s, y, position in zip(scores, labels, positions):
            siou, ppv = frame_component_scores(s, y, float(threshold), self.min_pred, self.min_gt)
            self.tp += (siou[None] >= tau).sum(axis=1)
            self.fn += (siou[None] < tau).sum(axis=1)
            self.fp += (ppv[None] < tau).sum(axis=1)
            self.frame_sums.append((position, float(siou.sum()), float(ppv.sum())))
            self.n_gt += siou.size
            self.n_pred += ppv.size
        self.n_frames += scores.shape[0]

    def compute(self) -> dict:
        """``sIoU, PPV, mean_F1, F1_per_tau, TP/FN/FP per τ, thresholds_tau, n_gt_components, n_pred_components, n_frames``."""
        denom = 2 * self.tp + self.fn + self.fp
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), np.nan)
        frames = self.frame_sums
        if all(position is not None for position, _, _ in frames):
            frames = sorted(frames, key=lambda frame: frame[0])
        siou_sum, ppv_sum = sum(frame[1] for frame in frames), sum(frame[2] for frame in frames)
        return {"sIoU": siou_sum / self.n_gt if self.n_gt else float("nan"),
                "PPV": ppv_sum / self.n_pred if self.n_pred else float("nan"),
                "mean_F1": sum(f1.tolist()) / f1.size if f1.size else float("nan"),
                "F1_per_tau": f1.tolist(), "TP": self.tp.tolist(), "FN": self.fn.tolist(),
                "FP": self.fp.tolist(), "thresholds_tau": self.thresholds_tau.tolist(),
                "n_gt_components": self.n_gt, "n_pred_components": self.n_pred, "n_frames": self.n_frames}


def component_metrics(scores, labels, threshold: float, track: str = "anomaly", **options) -> dict:
    """One-shot :class:`ComponentMetrics` on score maps (H,W)|(B,H,W) and 0/1/255 labels."""
    metrics = ComponentMetrics(track=track, **options)
    metrics.update(scores, labels, threshold)
    return metrics.compute()
