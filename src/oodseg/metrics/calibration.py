"""In-distribution uncertainty quality (SPEC §4.3): ECE with a reliability diagram, AuSE.

Inputs per frame: an uncertainty map ``u`` (larger = less confident, e.g. ``msp``, PGN),
the softmax probabilities and the semantic label (trainIds, 255 ignored).

* **ECE** (Guo et al.): 15 equal-width confidence bins ``(b/15, (b+1)/15]`` (confidence 0 goes
  to the first bin); ``ECE = Σ_b n_b/N · |accuracy_b − mean confidence_b|``, accuracy =
  argmax prediction equals the label. Uncertainty becomes confidence by
  ``confidence="normalised"``: ``1 − u / max u`` with the maximum over the whole test data
  (as PGN does for its gradient scores; needs ``u ≥ 0``), ``"complement"``: ``1 − u``
  (for scores already in [0, 1], e.g. ``msp`` gives back the max softmax probability), or
  ``"minmax"``: ``1 − (u − min u) / (max u − min u)`` (for scores of any sign, e.g. energy).
* **AuSE** (Ilg et al.): pixel Brier score ``B = Σ_c (p_c − 1[c = y])²``. The model curve removes
  the fraction f of pixels with the highest ``u`` and takes the mean B of the rest; the
  oracle removes by highest B. Ties are removed proportionally (the expectation over tie
  orders). ``AuSE`` = area between the curves over f ∈ [0, 1), the left Riemann sum over
  ``f = i / n_fractions``, i = 0 … n_fractions−1.

``mode="exact"`` keeps every pixel (~26 bytes each); ``"streaming"`` keeps bounded
histograms (see :mod:`oodseg.metrics.tally`; ~40 MiB at 20 bits), where values within a
bin (relative width 4.9e-4) count as tied.
"""
from __future__ import annotations

import numpy as np

from oodseg.errors import OodsegError, check_choice
from oodseg.conventions import VOID
from oodseg.metrics.checks import as_batch, check_scores, to_numpy
from oodseg.metrics.state import MetricState
from oodseg.metrics.tally import ScoreTally

CONFIDENCE_MAPS = ("normalised", "complement", "minmax")


def calibration_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE bin of each confidence in [0, 1]: bins ``(b/n, (b+1)/n]``, with 0 in bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def remaining_mean(counts: np.ndarray, sums: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Mean weight of the pixels left after removing each fraction, removing groups in the given order.

    ``counts`` (G,) pixels per group and ``sums`` (G,) their summed weight, in removal order;
    a partially removed group loses its mean weight per removed pixel.
    """
    total, total_sum = counts.sum(), sums.sum()
    cum_count, cum_sum = np.cumsum(counts), np.cumsum(sums)
    removed = fractions * total
    j = np.searchsorted(cum_count, removed, side="right")
    prev_count = np.where(j > 0, cum_count[j - 1], 0)
    prev_sum = np.where(j > 0, cum_sum[j - 1], 0.0)
    removed_sum = prev_sum + (removed - prev_count) * sums[j] / counts[j]
    return (total_sum - removed_sum) / (total - removed)


def brier_scores(probs: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Pixel Brier score ``Σ_c (p_c − 1[c = y])²`` for probs (N, C) and labels (N,) in [0, C)."""
    p = probs.astype(np.float64, copy=False)
    return (p * p).sum(axis=1) - 2 * np.take_along_axis(p, label[:, None].astype(np.int64), 1)[:, 0] + 1


class CalibrationMetrics(MetricState):
    """ECE and AuSE accumulated over frames (update/compute/merge/all_reduce)."""

    SETTINGS = ("mode", "n_bins", "confidence", "n_fractions")

    def __init__(self, mode: str = "exact", n_bins: int = 15, confidence: str = "normalised",
                 n_fractions: int = 100, bits: int = 20):
        check_choice("confidence", confidence, CONFIDENCE_MAPS)
        self.mode, self.n_bins, self.confidence, self.n_fractions = mode, n_bins, confidence, n_fractions
        self.add_state("by_uncertainty", ScoreTally(channels=2, mode=mode, weighted=True, bits=bits),
                       "merge")  # wrong/right, Σ Brier
        self.add_state("by_brier", ScoreTally(channels=1, mode=mode, weighted=True, bits=bits), "merge")
        self.add_state("u_min", np.inf, "min")
        self.add_state("u_max", -np.inf, "max")

    def update(self, uncertainty, probs, label) -> None:
        """Add frames: ``uncertainty`` (B,H,W), softmax ``probs`` (B,C,H,W), ``label`` trainIds (B,H,W), 255 ignored."""
        u = check_scores(uncertainty, "uncertainty")
        p = to_numpy(probs, "probs")
        if p.ndim == 3:
            p = p[None]
        if p.ndim != 4 or (p.shape[0],) + p.shape[2:] != u.shape:
            raise OodsegError(f"probs: expected shape (B, C, H, W) matching uncertainty {u.shape}, got {p.shape}")
        if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise OodsegError("probs: expected softmax probabilities in [0, 1] (got values outside or NaN/Inf)")
        y = as_batch(label, "label")
        if y.shape != u.shape:
            raise OodsegError(f"label: shape {y.shape} does not match uncertainty shape {u.shape}")
        n_classes = p.shape[1]
        y = y.astype(np.int64)
        valid = y != VOID
        if ((y[valid] < 0) | (y[valid] >= n_classes)).any():
            raise OodsegError(f"label: values outside 0..{n_classes - 1} and 255")
        u_valid = u[valid]
        if u_valid.size == 0:
            return
        probs_valid = np.moveaxis(p, 1, -1)[valid]  # (N, C)
        y_valid = y[valid]
        correct = (probs_valid.argmax(axis=1) == y_valid).astype(np.uint8)
        brier = brier_scores(probs_valid, y_valid)
        self.by_uncertainty.add(u_valid, correct, brier)
        self.by_brier.add(brier, np.zeros(brier.size, np.uint8), brier)
        self.u_min, self.u_max = min(self.u_min, float(u_valid.min())), max(self.u_max, float(u_valid.max()))

    def _confidence(self, u: np.ndarray) -> np.ndarray:
        if self.confidence == "complement":
            if self.u_min < 0 or self.u_max > 1:
                raise OodsegError("confidence='complement': uncertainty must lie in [0, 1]")
            return 1.0 - u
        if self.confidence == "minmax":
            span = self.u_max - self.u_min
            return 1.0 - (u - self.u_min) / span if span > 0 else np.ones_like(u)
        if self.u_min < 0:
            raise OodsegError("confidence='normalised': uncertainty must be >= 0 (use 'complement' or shift it)")
        return 1.0 - u / self.u_max if self.u_max > 0 else np.ones_like(u)

    def compute(self) -> dict:
        """``ECE, AuSE, reliability {confidence, accuracy, count}, sparsification {fraction, model, oracle}, n_pixels``."""
        values, counts, brier_sums = self.by_uncertainty.groups()
        if values.size == 0:
            raise OodsegError("calibration: no valid pixels were given")
        n = counts.sum(axis=1)
        conf = self._confidence(values)
        bins = calibration_bins(conf, self.n_bins)
        bin_count = np.bincount(bins, weights=n, minlength=self.n_bins)
        bin_conf = np.bincount(bins, weights=conf * n, minlength=self.n_bins)
        bin_right = np.bincount(bins, weights=counts[:, 1], minlength=self.n_bins)
        filled = bin_count > 0
        centers = (np.arange(self.n_bins) + 0.5) / self.n_bins
        mean_conf = np.where(filled, bin_conf / np.maximum(bin_count, 1), centers)
        accuracy = np.where(filled, bin_right / np.maximum(bin_count, 1), 0.0)
        ece = float(np.sum(bin_count / n.sum() * np.abs(accuracy - mean_conf)))

        fractions = np.arange(self.n_fractions) / self.n_fractions
        model = remaining_mean(n, brier_sums, fractions)
        _, oracle_counts, oracle_sums = self.by_brier.groups()
        oracle = remaining_mean(oracle_counts[:, 0], oracle_sums, fractions)
        return {"ECE": ece, "AuSE": float(np.mean(model - oracle)),
                "reliability": {"confidence": mean_conf.tolist(), "accuracy": accuracy.tolist(),
                                "count": bin_count.astype(np.int64).tolist()},
                "sparsification": {"fraction": fractions.tolist(), "model": model.tolist(),
                                   "oracle": oracle.tolist()},
                "n_pixels": int(n.sum())}
