"""Speed of segment feature extraction (SPEC §3), as a ratio against a per-segment loop in the same run.

A 19-class 1024×2048 frame whose prediction is a grid of ~500 blocks (wavy borders, neighbours
of different classes), softmax probabilities concentrated on the block's class:

(a) class segments (MetaSeg; every pixel in a segment): ``segment_features`` with the E, D, V
    maps, cprob and ndist (the 75 Meta-OoD features) — target ≤ 1 s on one core;
(b) the reference: a Python loop over segments, each computing the same features with numpy on
    its own pixel mask (``ids == k``). It is timed on a subset of segments and extrapolated to
    all of them (printed as such);
also the one-off costs of ``dispersion_maps`` (E, D, V from the probabilities) and ``class_segments``.

Usage: ``python benchmarks/meta.py [--quick] [--repeats N] [--subset K]``; ``--quick`` halves
both sides of the frame. Prints medians (seconds) and ratios.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from oodseg.meta.features import dispersion_maps, segment_features
from oodseg.meta.segments import NEIGHBOUR_OFFSETS, class_segments, interior_mask
from _timing import median_time  # noqa: E402


def make_frame(height: int, width: int, classes: int = 19, blocks=(22, 23), seed: int = 0):
    """(probs float32 (C, H, W), prediction (H, W)): a grid of blocks with wavy borders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    by = ((yy + 6 * np.sin(xx / 17.0)) * blocks[0] / height).astype(int).clip(0, blocks[0] - 1)
    bx = ((xx + 6 * np.cos(yy / 13.0)) * blocks[1] / width).astype(int).clip(0, blocks[1] - 1)
    prediction = ((7 * by + 3 * bx) % classes).astype(np.int64)
    logits = rng.normal(0, 1, (classes, height, width)).astype(np.float32)
    np.put_along_axis(logits, prediction[None], 5.0, axis=0)
    probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    return probs, probs.argmax(0)


def loop_features(ids, segments, maps, probs, prediction):
    """Reference: one numpy pass per segment over its own mask (same features as segment_features)."""
    interior = interior_mask(ids)
    padded = np.pad(ids, 1)
    H, W = ids.shape
    rows = []
    for k in segments:
        mask = ids == k
        inner = mask & interior
        S, S_in = mask.sum(), inner.sum()
        S_bd = S - S_in
        row = [S, S_in, S_bd, S / S_bd, S_in / S_bd]
        for m in maps.values():
            v, vi, vb = m[mask], m[inner], m[mask & ~interior]
            mean, var = v.mean(), v.var()
            mi, vin = (vi.mean(), vi.var()) if S_in else (0.0, 0.0)
            row += [mean, mi, vb.mean(), var, vin, vb.var(), mean * S / S_bd, mi * S_in / S_bd,
                    var * S / S_bd, vin * S_in / S_bd]
        row += list(probs[:, mask].mean(axis=1))
        dilated = np.zeros_like(mask)
        pm = np.pad(mask, 1)
        for dh, dw in NEIGHBOUR_OFFSETS:
            dilated |= pm[1 + dh:H + 1 + dh, 1 + dw:W + 1 + dw]
        ring = dilated & ~mask
        row += list(np.bincount(prediction[ring], minlength=probs.shape[0]) / max(ring.sum(), 1))
        h, w = np.nonzero(mask)
        rows.append(row + [h.mean(), w.mean()])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512×1024 instead of 1024×2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subset", type=int, default=20, help="segments timed in the per-segment loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    height, width = (512, 1024) if args.quick else (1024, 2048)
    probs, prediction = make_frame(height, width)
    ids, n, _ = class_segments(prediction)
    maps = dispersion_maps(probs)
    print(f"frame {height}×{width}, 19 classes, {n} class segments, 75 features, one thread")

    t_maps = median_time(lambda: dispersion_maps(probs), args.repeats, warmup=True)
    t_segments = median_time(lambda: class_segments(prediction), args.repeats, warmup=True)
    t_features = median_time(lambda: segment_features(ids, n, maps, probs, prediction), args.repeats, warmup=True)
    subset = np.linspace(1, n, min(args.subset, n)).round().astype(int)
    fast = segment_features(ids, n, maps, probs, prediction)
    slow = loop_features(ids, subset, maps, probs, prediction)
    np.testing.assert_allclose(fast.values[subset - 1], slow, rtol=1e-5, atol=1e-6)  # the loop sums float32
    t_subset = median_time(lambda: loop_features(ids, subset, maps, probs, prediction), 1)
    t_loop = t_subset * n / len(subset)
    print(f"dispersion_maps (E, D, V)        {t_maps:8.3f} s")
    print(f"class_segments                   {t_segments:8.3f} s")
    print(f"segment_features (vectorised)    {t_features:8.3f} s   target <= 1 s: {'ok' if t_features <= 1 else 'MISSED'}")
    print(f"per-segment loop (extrapolated from {len(subset)} of {n} segments) {t_loop:8.3f} s")
    print(f"ratio loop / vectorised: {t_loop / t_features:.1f}x   (features equal on the subset)")


if __name__ == "__main__":
    main()
