"""What storing float32 score maps as float16 changes (SPEC §7): merged levels and the pixel metrics.

Rounding to float16 is monotone, so it never swaps two scores; it alters the ranking that the
metrics see exactly when it merges distinct float32 values into one float16 value — within a
frame, or across frames, since pooled metrics rank the pixels of all frames together.
:class:`Float16Audit` detects both: per frame it counts the distinct values before and after
rounding, and for every float16 value it keeps the smallest and largest float32 value that
rounded to it over all frames (a merge somewhere ⇔ some float16 value has min < max).
On labelled frames it also computes AP and AUROC of the float32 and the float16 maps
(exact sweeps, ~5 bytes per pixel each, like ``oodseg evaluate --mode exact``).
"""
from __future__ import annotations

import numpy as np

from oodseg.metrics.checks import check_ood_label, check_scores
from oodseg.metrics.pixel import PixelMetrics
from oodseg.metrics.state import MetricState

_FLOAT16_CODES = 1 << 16


def distinct_count(score) -> int:
    """Number of distinct values of a score map (any shape)."""
    return int(np.unique(np.asarray(score)).size)


class Float16Audit(MetricState):
    """Accumulates, frame by frame, what float16 storage does to one method's float32 maps.

    ``update(score, label=None)``: ``score`` float32 ``(H, W)`` as computed; ``label`` 0/1/255
    ``(H, W)`` when the frame is labelled. ``merge`` adds another audit (e.g. another rank's).
    """

    SETTINGS = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method
        self.add_state("frames", 0, "sum")
        self.add_state("merged_frames", 0, "sum")
        self.add_state("levels", [], "cat")  # (float32, float16) distinct values per frame
        self.add_state("low", np.full(_FLOAT16_CODES, np.inf, dtype=np.float32), "min")  # per float16 pattern
        self.add_state("high", np.full(_FLOAT16_CODES, -np.inf, dtype=np.float32), "max")
        self.add_state("labelled_float32", PixelMetrics(mode="exact"), "merge")
        self.add_state("labelled_float16", PixelMetrics(mode="exact"), "merge")

    @property
    def labelled(self) -> tuple[PixelMetrics, PixelMetrics]:
        """Pixel metrics of the labelled frames: (float32 maps, the same maps rounded to float16)."""
        return self.labelled_float32, self.labelled_float16

    def update(self, score, label=None) -> None:
        """Add frames: ``score`` float (H, W)|(B, H, W); ``label`` 0/1/255 of the same shape, or None."""
        scores = check_scores(score).astype(np.float32, copy=False)
        if label is not None:
            labels = check_ood_label(label, scores.shape)
            self.labelled[0].update(scores, labels)
            self.labelled[1].update(scores.astype(np.float16).astype(np.float32), labels)
        for frame in scores:
            values = np.unique(frame)                   # ascending float32
            rounded = values.astype(np.float16)         # non-decreasing: equal values are contiguous
            starts = np.flatnonzero(np.concatenate(([True], rounded[1:] != rounded[:-1])))
            ends = np.concatenate((starts[1:], [values.size])) - 1
            codes = rounded[starts].view(np.uint16)
            self.low[codes] = np.minimum(self.low[codes], values[starts])
            self.high[codes] = np.maximum(self.high[codes], values[ends])
            self.levels.append((int(values.size), int(starts.size)))
            self.merged_frames += int(starts.size < values.size)
            self.frames += 1

    @property
    def alters_ranking(self) -> bool:
        """True when float16 merges two distinct float32 scores (within a frame or across frames)."""
        return bool((self.low < self.high).any())

    def summary(self) -> dict:
        """``frames``, ``frames_merged``, ``alters_ranking``, median distinct values per frame in
        float32 and float16, and ``AP``/``AUROC`` as ``{"float32": f, "float16": f}`` (None without
        labelled frames holding both classes)."""
        levels = np.array(self.levels, dtype=np.int64).reshape(-1, 2)
        out = {"frames": self.frames, "frames_merged": self.merged_frames, "alters_ranking": self.alters_ranking,
               "median_levels": {"float32": float(np.median(levels[:, 0])) if self.frames else None,
                                 "float16": float(np.median(levels[:, 1])) if self.frames else None},
               "AP": None, "AUROC": None}
        if self.labelled[0].n_frames:
            computed = [metrics.compute() for metrics in self.labelled]
            if not np.isnan(computed[0]["AUROC"]):
                for key in ("AP", "AUROC"):
                    out[key] = {"float32": computed[0][key], "float16": computed[1][key]}
        return out

    def warning(self) -> str | None:
        """One line naming the method and the measured change when float16 alters the ranking, else None."""
        if not self.alters_ranking:
            return None
        s = self.summary()
        where = (f"on {s['frames_merged']} of {s['frames']} frames" if s["frames_merged"]
                 else f"across the {s['frames']} frames")
        levels = s["median_levels"]
        text = (f"{self.method}: float16 storage merges distinct scores {where} (median distinct values per "
                f"frame {levels['float32']:.0f} as float32 → {levels['float16']:.0f} as float16)")
        if s["AP"] is not None:
            text += (f"; AP {s['AP']['float32']:.4f} → {s['AP']['float16']:.4f}, "
                     f"AUROC {s['AUROC']['float32']:.4f} → {s['AUROC']['float16']:.4f} on the labelled frames")
        return text + "; store float32 (the default) to keep the ranking"
