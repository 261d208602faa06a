"""Hand-crafted segment features for meta classification / regression (SPEC §3).

For a label map of segments (:mod:`oodseg.meta.segments`) and pixel maps, every feature of
every segment is computed at once with ``np.bincount`` (no loop over segments):

- sizes ``S, S_in, S_bd, S_rel = S/S_bd, S_rel_in = S_in/S_bd`` (pixels; interior = pixels
  whose 8 neighbours are all in the segment, image-border pixels are boundary);
- per pixel map ``M`` (entropy ``E``, margin ``D``, variation ratio ``V``, any score, PGN maps):
  ``M_mean, M_in, M_bd`` (means over the segment, its interior, its boundary), ``M_var,
  M_var_in, M_var_bd`` (population variances), ``M_rel = M_mean·S_rel``, ``M_rel_in =
  M_in·S_rel_in``, ``M_var_rel = M_var·S_rel``, ``M_var_rel_in = M_var_in·S_rel_in``;
  a segment without interior has ``M_in = M_var_in = 0``;
- ``cprob0..C-1``: mean softmax probability of each class over the segment;
- ``ndist0..C-1``: share of each predicted class among the ring pixels (8-neighbourhood
  dilation of the segment minus the segment, inside the image; each ring pixel counted once);
- ``mean_x, mean_y``: geometric centre, as in the authors' code ``mean_x`` = mean row index
  ``C_h`` and ``mean_y`` = mean column index ``C_w`` (pixels).

With ``E, D, V`` and C = 19 this is exactly the 75-feature "full Meta-OoD set" (5 + 3·10 + 19 +
19 + 2). The Meta-OoD paper says 83 features; its public code computes these 75 (SPEC §3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from oodseg.errors import OodsegError
from oodseg.meta.segments import NEIGHBOUR_OFFSETS, interior_mask

SIZE_FEATURES = ("S", "S_in", "S_bd", "S_rel", "S_rel_in")
MAP_STATISTICS = ("mean", "in", "bd", "var", "var_in", "var_bd", "rel", "rel_in", "var_rel", "var_rel_in")
#: The softmax dispersion maps of Meta-OoD / MetaSeg: entropy, probability margin, variation ratio.
DISPERSION_MAPS = ("E", "D", "V")
#: Gather the segment pixels first when they cover less than this fraction of the frame.
_GATHER_BELOW = 0.5


@dataclass
class SegmentFeatures:
    """Features of the segments of one frame.

    ``values`` float64 (n_segments, n_features), ``names`` (n_features,), ``segment_ids``
    int64 (n_segments,) the ids 1..n of the label map the rows belong to.
    """

    values: np.ndarray
    names: list[str]
    segment_ids: np.ndarray


def map_feature_names(map_name: str) -> list[str]:
    """The 10 statistic names of one pixel map, e.g. ``E_mean, E_in, ..., E_var_rel_in``."""
    return [f"{map_name}_{stat}" for stat in MAP_STATISTICS]


def feature_names(map_names, num_classes: int | None) -> list[str]:
    """Column names of :func:`segment_features` for these maps and class count (None: no class features)."""
    names = list(SIZE_FEATURES)
    for name in map_names:
        names += map_feature_names(name)
    if num_classes is not None:
        names += [f"cprob{c}" for c in range(num_classes)] + [f"ndist{c}" for c in range(num_classes)]
    return names + ["mean_x", "mean_y"]


def metaood_feature_names(num_classes: int = 19) -> list[str]:
    """The full Meta-OoD set: 75 names for 19 classes (sizes, E/D/V statistics, cprob, ndist, centre)."""
    return feature_names(DISPERSION_MAPS, num_classes)


def dispersion_maps(probs) -> dict[str, np.ndarray]:
    """``{"E", "D", "V"}`` float32 (H, W) maps of softmax probabilities ``probs`` (C, H, W).

    ``E = -Σ p log p / log C`` (``0 log 0 = 0``), ``D = 1 - p_(1) + p_(2)`` (margin),
    ``V = 1 - p_(1)``. One pass per class over contiguous (H, W) planes (a reduction across
    the class axis of a (C, H, W) array is strided and several times slower).
    """
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    if p.ndim != 3 or p.shape[0] < 2:
        raise OodsegError(f"probs: expected (C, H, W) with C >= 2, got {tuple(p.shape)}")
    entropy = torch.zeros(p.shape[1:], dtype=torch.float32)
    first = p[0].clone()
    second = torch.full_like(first, float("-inf"))
    entropy -= torch.special.xlogy(p[0], p[0])
    for plane in p[1:]:
        entropy -= torch.special.xlogy(plane, plane)
        torch.maximum(second, torch.minimum(first, plane), out=second)
        torch.maximum(first, plane, out=first)
    entropy = (entropy / math.log(p.shape[0])).clamp_(0.0, 1.0)
    return {"E": entropy.numpy(), "D": (1.0 - first + second).numpy(), "V": (1.0 - first).numpy()}


class _SegmentPixels:
    """The pixels of all segments: bin index ``2·id + interior`` per pixel (all pixels, or only the
    segment pixels when they are few) and the row runs of constant id, for sums over the frame."""

    def __init__(self, ids: np.ndarray, n: int):
        flat = ids.ravel()
        interior = interior_mask(ids).ravel()
        self.n, self.shape = n, ids.shape
        self.selection = None
        if np.count_nonzero(flat) < _GATHER_BELOW * flat.size:
            self.selection = np.flatnonzero(flat)
            flat, interior = flat[self.selection], interior[self.selection]
        self.bins = flat.astype(np.int64) * 2 + interior
        self.bin_counts = np.bincount(self.bins, minlength=2 * (n + 1)).astype(np.float64)
        self.n_bd, self.n_in = self.bin_counts[2::2], self.bin_counts[3::2]
        self.size = self.n_bd + self.n_in
        # runs: maximal pieces of one image row with one id (0 included), in raster order
        H, W = ids.shape
        change = np.empty(ids.shape, dtype=bool)
        change[:, 0] = True
        np.not_equal(ids[:, 1:], ids[:, :-1], out=change[:, 1:])
        self.run_starts = np.flatnonzero(change)
        self.run_ids = ids.ravel()[self.run_starts].astype(np.int64)
        self.run_lengths = np.diff(np.append(self.run_starts, H * W))

    def take(self, pixel_map: np.ndarray) -> np.ndarray:
        """Values of an (H, W) map at the pixels of ``bins`` (same order)."""
        flat = pixel_map.ravel()
        return flat if self.selection is None else flat[self.selection]

    def run_sums_to_segments(self, run_sums: np.ndarray) -> np.ndarray:
        """(K, n_runs) sums per run → (K, n) sums per segment."""
        return np.stack([np.bincount(self.run_ids, weights=row, minlength=self.n + 1)[1:] for row in run_sums])

    def channel_means(self, channels: np.ndarray) -> np.ndarray:
        """(n, K) mean of each channel of ``channels`` (K, H, W) over each segment (float64 sums over runs)."""
        flat = channels.reshape(channels.shape[0], -1)
        run_sums = np.stack([np.add.reduceat(channel, self.run_starts, dtype=np.float64) for channel in flat])
        return (self.run_sums_to_segments(run_sums) / self.size).T

    def centre(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) mean row index and (n,) mean column index of each segment (exact arithmetic-series sums)."""
        rows, first = np.divmod(self.run_starts, self.shape[1])
        length = self.run_lengths.astype(np.float64)
        row_sums = rows * length
        col_sums = length * first + length * (length - 1) / 2
        sums = self.run_sums_to_segments(np.stack([row_sums, col_sums]))
        return sums[0] / self.size, sums[1] / self.size


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _map_statistics(pixels: _SegmentPixels, values: np.ndarray, s_rel: np.ndarray, s_rel_in: np.ndarray) -> list[np.ndarray]:
    """The 10 statistics (MAP_STATISTICS order) of one map; variances by deviation from the bin means."""
    n = pixels.n
    bins = pixels.bins
    counts2 = pixels.bin_counts
    sums2 = np.bincount(bins, weights=values, minlength=2 * (n + 1))
    means2 = _safe_divide(sums2, counts2)
    deviation = values - means2[bins]
    var2 = _safe_divide(np.bincount(bins, weights=deviation * deviation, minlength=2 * (n + 1)), counts2)
    mean_bd, mean_in = means2[2::2], means2[3::2]
    var_bd, var_in = var2[2::2], var2[3::2]
    size = pixels.size
    mean = (sums2[2::2] + sums2[3::2]) / size
    # law of total variance over the interior and boundary parts
    var = (pixels.n_in * (var_in + (mean_in - mean) ** 2) + pixels.n_bd * (var_bd + (mean_bd - mean) ** 2)) / size
    return [mean, mean_in, mean_bd, var, var_in, var_bd, mean * s_rel, mean_in * s_rel_in, var * s_rel, var_in * s_rel_in]


def ring_class_counts(ids: np.ndarray, n: int, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (n, num_classes): ring pixels of each segment by predicted class.

    The ring of segment k = pixels outside k with an 8-neighbour in k (inside the image);
    each ring pixel is counted once per segment it borders.
    """
    H, W = ids.shape
    padded = np.pad(ids, 1)
    candidates = np.zeros(ids.shape, dtype=bool)
    for dh, dw in NEIGHBOUR_OFFSETS:
        neighbour = padded[1 + dh:H + 1 + dh, 1 + dw:W + 1 + dw]
        candidates |= (neighbour != 0) & (neighbour != ids)
    q = np.flatnonzero(candidates)
    qh, qw = np.divmod(q, W)
    flat_padded = padded.ravel()
    neighbours = np.stack([flat_padded[(qh + 1 + dh) * (W + 2) + (qw + 1 + dw)] for dh, dw in NEIGHBOUR_OFFSETS], axis=1)
    neighbours[neighbours == ids.ravel()[q][:, None]] = 0
    neighbours.sort(axis=1)
    keep = neighbours > 0
    keep[:, 1:] &= neighbours[:, 1:] != neighbours[:, :-1]
    segment = neighbours[keep].astype(np.int64)
    ring_class = np.repeat(prediction.ravel()[q].astype(np.int64), keep.sum(axis=1))
    counts = np.bincount(segment * num_classes + ring_class, minlength=(n + 1) * num_classes)
    return counts.reshape(n + 1, num_classes)[1:]


def segment_means(ids: np.ndarray, n: int, pixel_map: np.ndarray) -> np.ndarray:
    """float64 (n,) mean of ``pixel_map`` (H, W) over each segment 1..n of ``ids``."""
    flat = ids.ravel()
    sums = np.bincount(flat, weights=pixel_map.ravel().astype(np.float64), minlength=n + 1)[1:]
    return sums / np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1)


def _check_map(name: str, array, shape) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise OodsegError(f"{name}: shape {array.shape} does not match the segment map {shape}")
    if not np.isfinite(array).all():
        raise OodsegError(f"{name}: contains NaN or Inf")
    return array


def segment_features(ids: np.ndarray, n: int, maps: Mapping[str, np.ndarray] | None = None,
                     probs: np.ndarray | None = None, prediction: np.ndarray | None = None) -> SegmentFeatures:
    """All features (module docstring) of the ``n`` segments of the label map ``ids`` int (H, W).

    ``maps``: name → float (H, W) pixel map (statistics in the given order); ``probs``: softmax
    (C, H, W) for ``cprob*``/``ndist*`` (omit both: no class features); ``prediction``: (H, W)
    predicted classes for ``ndist*`` (default: argmax of ``probs``).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise OodsegError(f"segments: expected an integer (H, W) label map, got {ids.dtype} {ids.shape}")
    shape = ids.shape
    maps = dict(maps or {})
    maps = {name: _check_map(name, m, shape) for name, m in maps.items()}
    num_classes = None
    if probs is not None:
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[1:] != shape:
            raise OodsegError(f"probs: shape {probs.shape} does not match the segment map {shape} (expected (C, H, W))")
        num_classes = probs.shape[0]
        if prediction is None:
            prediction = probs.argmax(axis=0)
        prediction = _check_map("prediction", prediction, shape)
    names = feature_names(list(maps), num_classes)
    if n == 0:
        return SegmentFeatures(np.zeros((0, len(names))), names, np.zeros(0, dtype=np.int64))

    pixels = _SegmentPixels(ids, n)
    size = pixels.size
    s_rel = size / pixels.n_bd
    s_rel_in = pixels.n_in / pixels.n_bd
    columns = [size, pixels.n_in, pixels.n_bd, s_rel, s_rel_in]
    for name, pixel_map in maps.items():
        columns += _map_statistics(pixels, pixels.take(pixel_map).astype(np.float64), s_rel, s_rel_in)
    if probs is not None:
        columns += list(pixels.channel_means(probs).T)
        ring = ring_class_counts(ids, n, prediction, num_classes).astype(np.float64)
        ring_size = np.maximum(ring.sum(axis=1), 1.0)
        columns += list((ring / ring_size[:, None]).T)
    columns += list(pixels.centre())
    values = np.stack(columns, axis=1)
    return SegmentFeatures(values, names, np.arange(1, n + 1, dtype=np.int64))
