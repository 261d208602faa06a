"""Dataset-level OoD evaluation: score files + labels -> the ``oodseg.evaluate`` result object.

Two passes over the frames (SPEC §4): pass 1 accumulates the pooled pixel metrics (AP,
AUROC, FPR95, best F1) and picks the best-F1 threshold θ; pass 2 computes the SMIYC
component metrics (sIoU, PPV, mean F1) at θ. With a given threshold both run in one pass.
Pass 1 keeps the frames it decoded for pass 2 up to :data:`KEPT_FRAME_BYTES` (decoding a score
file costs more than both metrics of the frame); frames beyond that are read again.
Pass 1 also warns (:class:`~oodseg.errors.OodsegWarning`, one line) when a score file holds
fewer than :data:`MIN_DISTINCT_SCORES` distinct values on a frame with both classes — the mark
of maps stored at too low a precision (e.g. ODIN at T=1000 in float16), whose metrics mislead.

Protocols: ``exact`` sweeps every distinct score value (:mod:`oodseg.metrics.pixel`);
``smiyc`` reproduces the official SegmentMeIfYouCan code (:mod:`oodseg.metrics.smiyc`:
768 percentile bins per frame, θ from that binned curve, maps in their file dtype and θ
compared as numpy 1.23 does). ``smiyc`` is the default on SMIYC layouts.

Under ``torchrun`` each rank reads its shard of the frames (rank-strided), the metric
states are all-reduced, and every rank returns the same result (rank 0 should write it).
"""
from __future__ import annotations

import copy
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from oodseg import distributed
from oodseg.conventions import VOID, resize_map
from oodseg.data.imagefiles import read_raw_label
from oodseg.data.io import find_score, read_score
from oodseg.data.readers import Dataset
from oodseg.errors import OodsegError, OodsegWarning, check_choice
from oodseg.metrics.component import TRACK_MIN_SIZES, ComponentMetrics
from oodseg.metrics.pixel import PixelMetrics
from oodseg.metrics.quantization import distinct_count
from oodseg.metrics.smiyc import SMIYC_BINS, SmiycPixelMetrics, compared_threshold
from oodseg.metrics.tally import MODES
from oodseg.workflows.workers import map_chunks, resolve_workers

SCHEMA, VERSION = "oodseg.evaluate", 1
#: Fewer distinct values than this on a frame with both classes triggers a warning.
MIN_DISTINCT_SCORES = 50
PROTOCOLS = ("smiyc", "exact")
#: Bytes of decoded frames (score map + label) pass 1 keeps for pass 2, all workers together; beyond it
#: pass 2 reads the files again. 512 MiB: ~200 frames of 512x1024 in float32, ~50 of 1024x2048.
KEPT_FRAME_BYTES = 512 * 2**20
SMIYC_KINDS = ("smiyc-anomaly", "smiyc-obstacle")


def default_protocol(kind: str, aggregate: str = "pooled") -> str:
    """``smiyc`` for SMIYC layouts evaluated pooled, ``exact`` otherwise."""
    return "smiyc" if kind in SMIYC_KINDS and aggregate == "pooled" else "exact"


def resize_score(score: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (``align_corners=False``, SPEC §0) of a float32 ``(h, w)`` map to ``size`` ``(H, W)``."""
    if score.shape == tuple(size):
        return score
    import torch  # only a resize needs it: evaluating score files at the label size imports no torch

    return resize_map(torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))[None], size)[0].numpy()


def load_roi(roi) -> np.ndarray | None:
    """A region of interest as bool ``(H, W)``: an array, or an image file whose non-zero pixels are inside."""
    if roi is None:
        return None
    if isinstance(roi, (str, Path)):
        return read_raw_label(roi) != 0
    roi = np.asarray(roi)
    if roi.ndim != 2:
        raise OodsegError(f"roi: expected a 2-D mask, got shape {roi.shape}")
    return roi.astype(bool)


class FrameReader:
    """Reads (score, label) pairs of a dataset frame: label decoded, ROI applied, score sized to the label."""

    def __init__(self, dataset: Dataset, scores_dir: Path, resize: bool, roi: np.ndarray | None,
                 native: bool = False):
        self.dataset, self.scores_dir, self.resize, self.roi, self.native = dataset, scores_dir, resize, roi, native
        self.coarse: list[tuple[str, int]] = []  # (file, distinct values) of coarse two-class frames

    def __call__(self, index: int, check_levels: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(score (H, W) float32 — or its file dtype when native —, label uint8 (H, W))`` of frame
        ``index``; ``check_levels`` records a coarse file in :attr:`coarse`."""
        frame = self.dataset.frame(index)
        label = self.dataset.read_label(index)
        path = find_score(self.scores_dir, frame.fid)
        score = read_score(path, native=self.native)
        if self.roi is not None:
            if self.roi.shape != label.shape:
                raise OodsegError(f"roi: size {self.roi.shape} differs from label size {label.shape} of {frame.label_path}")
            label = np.where(self.roi, label, VOID).astype(np.uint8)
        if check_levels and (label == 0).any() and (label == 1).any():
            # the stored values, before any resize; a spread sample of 4096 pixels with enough distinct
            # values settles it without sorting the whole map (~0.2 s for 1024x2048)
            sample = score.ravel()[:: max(1, score.size // 4096)]
            if distinct_count(sample) < MIN_DISTINCT_SCORES:
                levels = distinct_count(score)
                if levels < MIN_DISTINCT_SCORES:
                    self.coarse.append((str(path), levels))
        if score.shape != label.shape:
            if not self.resize:
                raise OodsegError(f"{path}: score size {score.shape} differs from label size {label.shape} "
                                  f"of {frame.label_path} (use resize to upsample bilinearly)")
            score = resize_score(score.astype(np.float32, copy=False), label.shape)
        return score, label


def _finite_or_none(value):
    """JSON-safe number: NaN/Inf become None (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _warn_coarse(coarse: list[tuple[str, int]]) -> None:
    """One warning line (main rank) naming the first coarse file, its count and how many more there are."""
    if not coarse or not distributed.is_main():
        return
    path, levels = coarse[0]
    more = (f" (and {len(coarse) - 1} more such files, the coarsest with {min(n for _, n in coarse)})"
            if len(coarse) > 1 else "")
    warnings.warn(f"{path}: only {levels} distinct score values on a frame with both classes{more}; "
                  "stored at too low a precision (e.g. float16)? the metrics see ties the method did not make",
                  OodsegWarning, stacklevel=3)


def _add_components(components: ComponentMetrics, score: np.ndarray, label: np.ndarray, theta: float,
                    protocol: str, index: int) -> None:
    """Frame ``index``'s components at θ; smiyc: ``score > θ`` in the map's dtype, as the official code
    under numpy 1.23."""
    components.update(score, label, compared_threshold(theta, score.dtype) if protocol == "smiyc" else theta,
                      positions=[index])


def _pixel_pass(read: FrameReader, settings: dict, indices: list[int]):
    """Pass 1 over ``indices`` (in a worker): ``(PixelMetrics, SmiycPixelMetrics | None,
    ComponentMetrics at the given θ | None, coarse files, {index: (score, label)} kept for pass 2)``.

    Keeps frames while they fit in ``settings["kept_bytes_per_frame"]`` × ``len(indices)`` bytes.
    """
    read = copy.copy(read)
    read.coarse = []
    pixel = PixelMetrics(mode=settings["mode"], aggregate=settings["aggregate"])
    official = SmiycPixelMetrics(mode=settings["mode"]) if settings["protocol"] == "smiyc" else None
    components = ComponentMetrics(track=settings["track"]) if settings["threshold"] is not None else None
    kept, room = {}, settings["kept_bytes_per_frame"] * len(indices)
    for i in indices:
        score, label = read(i, check_levels=True)
        pixel.update(score, label)
        if official is not None:
            official.update(score, label, positions=[i])
        if components is not None:
            _add_components(components, score, label, settings["threshold"], settings["protocol"], i)
        elif score.nbytes + label.nbytes <= room:
            kept[i] = score, label
            room -= score.nbytes + label.nbytes
    return pixel, official, components, read.coarse, kept


def _component_pass(read: FrameReader, settings: dict, frames: list[tuple[int, tuple | None]]) -> ComponentMetrics:
    """Pass 2 over ``frames`` (in a worker): the component metrics at ``settings["threshold"]``; each item is
    ``(index, (score, label) kept by pass 1 | None)``, a frame not kept is read again."""
    components = ComponentMetrics(track=settings["track"])
    for i, kept in frames:
        score, label = kept if kept is not None else read(i)
        _add_components(components, score, label, settings["threshold"], settings["protocol"], i)
    return components


def evaluate_dataset(dataset: Dataset, scores_dir: str | Path, track: str = "anomaly", mode: str = "exact",
                     threshold: float | None = None, resize: bool = False, roi=None, aggregate: str = "pooled",
                     method: str | None = None, max_curve_points: int = 512, protocol: str | None = None,
                     workers: int | None = 0) -> dict:
    """Evaluate the score files in ``scores_dir`` (``{fid}.hdf5|.h5|.npy|.npz``) against ``dataset``'s labels.

    ``track``: component size filters (``anomaly`` 500/100 px, ``obstacle`` 50/10 px).
    ``mode``: pixel metrics ``exact`` or ``streaming``. ``threshold``: θ of the component
    metrics (default: the best-F1 pixel threshold). ``resize``: bilinearly resize scores to
    the label size (otherwise a size mismatch is an error). ``roi``: bool ``(H, W)`` mask or
    image file; pixels outside become void. ``aggregate``: ``pooled`` or ``per_image``
    (StreetHazards). ``method``: name stored in the result (default: the parent folder of
    ``scores_dir``, i.e. ``{out}/{method}/{dataset}``). ``protocol``: ``smiyc`` (official
    SegmentMeIfYouCan binning; pooled only) or ``exact``; default :func:`default_protocol`.
    ``curves`` are the exact-protocol curves under both protocols. ``workers``: processes reading and
    decoding the files, each computing the metrics of its chunk of frames (merged in order: the same
    numbers as inline); 0 (default): inline; None: :func:`oodseg.workflows.workers.default_workers`.

    Returns the ``oodseg.evaluate`` result object (docs/results-schema.md).
    """
    if dataset.label_type != "ood":
        what = "semantic (trainId)" if dataset.label_type == "semantic" else "no"
        raise OodsegError(f"{dataset.root}: dataset kind {dataset.kind} has {what} labels; "
                          "evaluation needs OoD labels 0/1/255")
    check_choice("track", track, sorted(TRACK_MIN_SIZES))
    check_choice("mode", mode, MODES)
    protocol = protocol or default_protocol(dataset.kind, aggregate)
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "smiyc" and aggregate != "pooled":
        raise OodsegError(f"protocol: smiyc pools pixels over the dataset; aggregate {aggregate!r} needs protocol exact")
    if threshold is not None and not math.isfinite(threshold):
        raise OodsegError(f"threshold: must be finite, got {threshold}")
    scores_dir = Path(scores_dir).expanduser().resolve()
    if not scores_dir.is_dir():
        raise OodsegError(f"{scores_dir}: scores folder not found")
    read = FrameReader(dataset, scores_dir, resize, load_roi(roi), native=protocol == "smiyc")
    mine = distributed.shard(range(len(dataset)))
    workers = resolve_workers(workers, len(mine))
    settings = {"mode": mode, "aggregate": aggregate, "protocol": protocol, "track": track, "threshold": threshold,
                "kept_bytes_per_frame": KEPT_FRAME_BYTES // max(len(mine), 1)}

    # pass 1 (+ components at a given θ): each worker reads its chunk of frames into its own states; merged in order
    parts = map_chunks(partial(_pixel_pass, read, settings), mine, workers,
                       f"{dataset.name}: pixel metrics" + ("" if threshold is None else " + components"))
    pixel, official, components, coarse, kept = parts[0]
    for part in parts[1:]:
        pixel.merge(part[0])
        if official is not None:
            official.merge(part[1])
        if components is not None:
            components.merge(part[2])
        coarse += part[3]
        kept.update(part[4])
    _warn_coarse([item for found in distributed.all_gather_objects(coarse) for item in found])
    pixel.all_reduce()
    if official is not None:
        official.all_reduce()
        px = official.compute()
    else:
        px = pixel.compute()
    if px["n_anomaly"] == 0 or px["n_anomaly"] == px["n_pixels"]:
        missing = "anomaly (1)" if px["n_anomaly"] == 0 else "inlier (0)"
        raise OodsegError(f"{dataset.root}: no {missing} pixels in the {px['n_frames']} evaluated frames; "
                          "pixel metrics are undefined")
    theta = px["best_F1_threshold"] if threshold is None else float(threshold)
    if threshold is None:
        frames = [(i, kept.pop(i, None)) for i in mine]
        parts = map_chunks(partial(_component_pass, read, {**settings, "threshold": theta}), frames, workers,
                           f"{dataset.name}: component metrics")
        del frames
        components = parts[0]
        for part in parts[1:]:
            components.merge(part)
    components.all_reduce()
    comp = components.compute()

    result = {
        "schema": SCHEMA, "version": VERSION,
        "dataset": dataset.name, "dataset_kind": dataset.kind,
        "method": method or scores_dir.parent.name,
        "track": track, "mode": mode, "aggregate": aggregate, "protocol": protocol,
        "smiyc_bins": SMIYC_BINS if protocol == "smiyc" else None,
        "root": str(dataset.root), "scores": str(scores_dir),
        "AP": px["AP"], "AUROC": px["AUROC"], "FPR95": px["FPR95"],
        "best_F1": px["best_F1"], "best_F1_threshold": px["best_F1_threshold"],
        "sIoU": comp["sIoU"], "PPV": comp["PPV"], "mean_F1": comp["mean_F1"],
        "component_threshold": theta,
        "n_frames": px["n_frames"], "n_pixels": px["n_pixels"], "n_anomaly_pixels": px["n_anomaly"],
        "n_gt_components": comp["n_gt_components"], "n_pred_components": comp["n_pred_components"],
        "curves": pixel.curves(max_points=max_curve_points),
    }
    return {k: _finite_or_none(v) for k, v in result.items()}
