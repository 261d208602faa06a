"""The official SegmentMeIfYouCan pixel computation (``--protocol smiyc``): per-frame percentile bins.

The road-anomaly-benchmark code (``PixBinaryClass``, 768 ``percentiles`` bins) does not sweep
every score value. Per frame, over the pixels in the ROI (label ≠ 255), it builds bin edges

* ``vmin − ε`` and ``vmax + ε`` with ``ε = max(0.01·(vmax − vmin), 0.01)``; ``vmax − vmin`` is
  computed in the map's dtype (float16 for SMIYC files), ``ε`` and the edges in float64;
* ``np.quantile`` of the anomaly scores at ``min(384, n_anomaly)`` equally spaced levels and of
  the inlier scores at ``min(384, n_inlier)`` levels (linear interpolation, in the map's dtype);

sorted and deduplicated, and counts each class per bin ``[e_i, e_{i+1})`` (the last bin
closed). Each bin's lower edge is a threshold: the frame contributes there its pixels
``>= e_i``. The thresholds of all frames are pooled and sorted from high to low, and the curve
is read at each distinct threshold with all pixels of that threshold counted. From this curve
it takes AP (step sum), AUROC (trapezoid from (0, 0)), FPR at the first TPR >= 0.95 and the
best-F1 threshold θ — exactly :func:`oodseg.metrics.pixel.sweep_metrics` on the pooled rows.

The component metrics then threshold the map at θ with ``score > θ``, and the official code,
run with its pinned numpy 1.23, compares a float16 map with θ cast to float16 (value-based
casting); :func:`compared_threshold` gives the value actually compared. Under numpy 2 the same
line compares in float64, and ε is computed in float16 — both change the official numbers
(the README's "Evaluation protocols" section); this module reproduces numpy 1.23.

The official code pools the frames' thresholds with ``np.argsort(t)[::-1]`` and reads the
curve at the last row of every threshold — and also at the very first row. When several
frames share the highest threshold (saturated maps: several frames reach the same float16
maximum), that first point holds one frame's top bin only, and which frame depends on the
tie-breaking of numpy 1.23's quicksort on the frames in their order. This is reproduced
(:func:`oodseg.metrics.legacy_argsort.argsort_last`) for the frames in dataset order, which
is what the official code computes with ``--no-parallel``; its default worker pool
(``imap_unordered``) may order frames differently, so then the official numbers themselves
vary from run to run.

State: per frame ``K <= num_bins + 1`` rows (bin lower edge, anomaly count, inlier count) —
the official code's own state, 24 bytes per row, independent of the image size. ``mode="exact"``
keeps every frame's ROI pixels (own dtype + labels) and bins them in :meth:`compute`;
``mode="streaming"`` bins each frame in :meth:`SmiycPixelMetrics.update` and keeps only its rows.
Both give identical numbers.
"""
from __future__ import annotations

import numpy as np

from oodseg.conventions import ANOMALY, VOID
from oodseg.errors import OodsegError, check_choice
from oodseg.metrics.checks import check_mask, check_ood_label, check_scores
from oodseg.metrics.legacy_argsort import argsort_last
from oodseg.metrics.pixel import sweep_metrics
from oodseg.metrics.state import MetricState
from oodseg.metrics.tally import MODES

SMIYC_BINS = 768
"""Number of percentile bins of the official ``PixBinaryClass`` metric."""


def sorted_quantiles(ordered: np.ndarray, levels: np.ndarray, dtype) -> np.ndarray:
    """``np.quantile(x, levels)`` (method ``linear``) from ``ordered`` = x sorted ascending, bit for bit.

    ``ordered`` (N,) N >= 1, any float dtype holding x's values exactly; ``dtype``: x's own dtype,
    in which numpy takes the difference of the two neighbours before interpolating in float64
    (``numpy.lib._function_base_impl._lerp``, the same in numpy 1.23). Skips numpy's partition
    (``np.quantile`` partitions around every level: ~6x a sort for 384 levels). Returns float64 (L,).
    """
    n = ordered.size
    virtual = (n - 1) * levels
    below = np.floor(virtual)
    below[virtual >= n - 1] = -1  # numpy's convention for the last point: both neighbours are x[-1]
    lower = below.astype(np.intp)
    upper = np.where(lower == -1, -1, lower + 1)
    gamma = virtual - below
    a, b = ordered[lower].astype(dtype), ordered[upper].astype(dtype)
    difference = b - a  # in x's dtype, as numpy
    result = a + difference * gamma
    second_half = gamma >= 0.5
    result[second_half] = (b - difference * (1 - gamma))[second_half]
    return result


def frame_bins(values: np.ndarray, anomaly: np.ndarray, num_bins: int = SMIYC_BINS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's official percentile bins.

    ``values`` (N,) ROI scores in the map's dtype, ``anomaly`` (N,) bool. Returns the bins'
    lower edges (K,) float64 ascending and the anomaly and inlier pixel counts per bin (K,) int64.
    Each class is sorted once (float16 maps as float32, exact and faster); its quantiles and its
    counts per bin are read from that order.
    """
    if values.size == 0:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    dtype = values.dtype
    sort_dtype = np.float32 if dtype == np.float16 else dtype
    classes = [np.sort(members.astype(sort_dtype, copy=False)) for members in (values[anomaly], values[~anomaly])]
    present = [ordered for ordered in classes if ordered.size]
    vmin = min(ordered[0] for ordered in present).astype(dtype)
    vmax = max(ordered[-1] for ordered in present).astype(dtype)
    with np.errstate(over="ignore"):
        spread = vmax - vmin  # in the map's dtype, as the official code
    eps = max(float(spread) * 1e-2, 1e-2)
    parts = [np.array([float(vmin) - eps, float(vmax) + eps])]
    for ordered in present:
        parts.append(sorted_quantiles(ordered, np.linspace(0, 1, min(num_bins // 2, ordered.size)), dtype))
    edges = np.unique(np.concatenate(parts).astype(np.float64))
    lower = edges[:-1]
    counts = []
    for ordered in classes:
        at_or_above = ordered.size - np.searchsorted(ordered.astype(np.float64, copy=False), lower, side="left")
        counts.append(at_or_above - np.append(at_or_above[1:], 0))  # pixels in [e_i, e_i+1)
    return lower, counts[0].astype(np.int64), counts[1].astype(np.int64)


def official_curve_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curve points of the official pooling, high to low: ``(thresholds, inlier, anomaly)`` per point.

    ``rows`` (3, R): [threshold, anomaly count, inlier count] of all frames, frame after frame,
    each frame's bins from high to low (the official concatenation). One point per distinct
    threshold holding all its rows, preceded by the point of the row numpy 1.23's
    ``argsort(...)[::-1]`` puts first (module doc): when the highest threshold has one row, the
    official curve holds that point twice (the second adds nothing but a zero term to its sums,
    which is kept so that the sums of AP and AUROC group their terms as the official ones, to the bit).
    Feeding the points' counts to :func:`~oodseg.metrics.pixel.sweep_metrics` gives the
    official curve's metrics.
    """
    thresholds, anomaly, inlier = rows
    distinct, index = np.unique(thresholds, return_inverse=True)
    summed = [np.bincount(index, weights=c, minlength=distinct.size)[::-1] for c in (inlier, anomaly)]
    points = [distinct[::-1], summed[0], summed[1]]
    if thresholds.size:  # the official curve always starts with its first row (its point twice if alone)
        first = argsort_last(thresholds) if np.count_nonzero(thresholds == distinct[-1]) > 1 else int(
            np.argmax(thresholds))
        partial = (inlier[first], anomaly[first])
        points = [np.concatenate(([distinct[-1]], points[0]))] + [
            np.concatenate(([p], c)) for p, c in zip(partial, points[1:])]
        points[1][1] -= partial[0]
        points[2][1] -= partial[1]
    return points[0], points[1].astype(np.int64), points[2].astype(np.int64)


def compared_threshold(threshold: float, dtype) -> float:
    """θ as numpy 1.23 compares it with a map of ``dtype``: cast to the smallest float type holding |θ|.

    Value-based casting: ``float16 map > θ`` runs in float16 when |θ| <= 65504, else in float32
    (then float64). Returns that value as a float, so ``map.astype(float32) > result`` is the same test.
    """
    compare = np.promote_types(np.dtype(dtype), np.min_scalar_type(float(threshold)))
    return float(np.asarray(threshold, dtype=np.float64).astype(compare))


class SmiycPixelMetrics(MetricState):
    """Official SMIYC pixel metrics with an update/compute/merge state (see module doc).

    ``mode``: ``"exact"`` (keeps ROI pixels, bins at :meth:`compute`) or ``"streaming"``
    (bins per frame, keeps ≤ ``num_bins + 1`` rows per frame). ``num_bins``: official 768.
    Frames are pooled in the order of their ``positions`` when every frame has one (e.g. the
    dataset index, so that sharded ranks pool in dataset order), else in the order added.
    """

    SETTINGS = ("mode", "num_bins")

    def __init__(self, mode: str = "exact", num_bins: int = SMIYC_BINS):
        check_choice("mode", mode, MODES)
        if num_bins < 2:
            raise OodsegError(f"num_bins: expected >= 2, got {num_bins}")
        self.mode, self.num_bins = mode, num_bins
        # per frame: (position | None, (values, anomaly mask) in exact mode | rows (3, K) in streaming mode)
        self.add_state("frames", [], "cat")
        self.add_state("n_frames", 0, "sum")

    def update(self, score, label, roi=None, positions=None) -> None:
        """Add frames: ``score`` float (H,W)|(B,H,W) in the file's dtype; ``label`` 0/1/255; ``roi`` optional
        bool; ``positions`` optional int per frame (its place in the dataset)."""
        scores = check_scores(score, native=True)
        labels = check_ood_label(label, scores.shape)
        valid = labels != VOID
        if roi is not None:
            valid &= check_mask(roi, scores.shape, "roi")
        positions = [None] * scores.shape[0] if positions is None else [int(p) for p in positions]
        if len(positions) != scores.shape[0]:
            raise OodsegError(f"positions: expected {scores.shape[0]} values, got {len(positions)}")
        for s, y, v, position in zip(scores, labels, valid, positions):
            pixels = (s[v], y[v] == ANOMALY)
            self.frames.append((position, pixels if self.mode == "exact" else self._frame_rows(*pixels)))
        self.n_frames += scores.shape[0]

    def _frame_rows(self, values: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
        """(3, K) [threshold, anomaly, inlier] of one frame's bins, high to low (empty bins kept, as officially)."""
        lower, n_anomaly, n_inlier = frame_bins(values, anomaly, self.num_bins)
        return np.stack((lower, n_anomaly.astype(np.float64), n_inlier.astype(np.float64)))[:, ::-1]

    def state_bytes(self) -> int:
        """Bytes held by the state."""
        return sum(sum(a.nbytes for a in state) if self.mode == "exact" else state.nbytes
                   for _, state in self.frames)

    def compute(self) -> dict:
        """``AP, AUROC, FPR95, best_F1, best_F1_threshold, TPR95_threshold, n_pixels, n_anomaly, n_frames``."""
        frames = self.frames
        if all(position is not None for position, _ in frames):
            frames = sorted(frames, key=lambda frame: frame[0])
        rows = [self._frame_rows(*state) if self.mode == "exact" else state for _, state in frames]
        table = np.concatenate(rows, axis=1) if rows else np.zeros((3, 0))
        out = sweep_metrics(*official_curve_rows(table))
        out["n_frames"] = self.n_frames
        return out


def smiyc_pixel_metrics(scores, labels, roi=None, num_bins: int = SMIYC_BINS) -> dict:
    """One-shot :class:`SmiycPixelMetrics` on score maps (H,W)|(B,H,W) (their dtype kept) and 0/1/255 labels."""
    metrics = SmiycPixelMetrics(mode="exact", num_bins=num_bins)
    metrics.update(scores, labels, roi)
    return metrics.compute()
