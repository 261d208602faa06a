"""Speed and memory of oodseg.metrics against straightforward references, as ratios from one run.

    python benchmarks/metrics.py           # 20M/200M pixels, 100 frames of 1024x2048
    python benchmarks/metrics.py --quick   # 2M/20M pixels, 10 frames

1. streaming PixelMetrics vs scikit-learn ``average_precision_score + roc_auc_score + roc_curve``
   on the same pixels (target >= 20x);
2. streaming state size and tracemalloc peak while feeding N and 10N pixels in chunks (target <= 50 MB);
3. ComponentMetrics vs the per-component ``np.isin`` loop of the official benchmark on frames of
   1024x2048 with ~20 GT components (target >= 10x). The loop is timed on a subset of frames and
   extrapolated linearly to the full count.
Times are medians of repeats; only ratios are meaningful on a shared machine.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from test_metrics_component import reference_frame_scores  # noqa: E402  (the loop reference)

from oodseg.metrics.component import ComponentMetrics  # noqa: E402
from oodseg.metrics.pixel import PixelMetrics  # noqa: E402
from _timing import median_time  # noqa: E402

CHUNK = (2, 1000, 1000)  # 2M pixels per update




def pixel_chunk(rng) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(CHUNK) < 0.05).astype(np.uint8)
    labels[rng.random(CHUNK) < 0.1] = 255
    scores = (rng.normal(size=CHUNK) + 1.5 * (labels == 1)).astype(np.float32)
    return scores, labels


def bench_pixel_speed(rng, n_pixels: int, repeats: int) -> None:
    n_chunks = n_pixels // int(np.prod(CHUNK))
    chunks = [pixel_chunk(rng) for _ in range(n_chunks)]

    def streaming():
        m = PixelMetrics(mode="streaming")
        for s, y in chunks:
            m.update(s, y)
        return m.compute()

    valid = [y != 255 for _, y in chunks]
    flat_s = np.concatenate([s[v] for (s, _), v in zip(chunks, valid)])
    flat_y = np.concatenate([y[v] for (_, y), v in zip(chunks, valid)])

    def sklearn():
        average_precision_score(flat_y, flat_s)
        roc_auc_score(flat_y, flat_s)
        roc_curve(flat_y, flat_s, drop_intermediate=False)

    t_stream = median_time(streaming, repeats)
    t_sklearn = median_time(sklearn, max(1, repeats // 2))
    ours, ref = streaming(), {"AP": average_precision_score(flat_y, flat_s)}
    print(f"[pixel] {n_chunks * np.prod(CHUNK) / 1e6:.0f}M pixels: streaming {t_stream:.2f}s, "
          f"sklearn (AP+AUROC+roc_curve) {t_sklearn:.2f}s -> {t_sklearn / t_stream:.1f}x faster (target >= 20x); "
          f"|AP diff| = {abs(ours['AP'] - ref['AP']):.1e}")


def bench_pixel_memory(rng, n_pixels: int) -> None:
    s, y = pixel_chunk(rng)
    for n in (n_pixels, 10 * n_pixels):
        m = PixelMetrics(mode="streaming")
        tracemalloc.start()
        for _ in range(n // s.size):
            m.update(s, y)
        m.compute()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"[memory] {n / 1e6:.0f}M pixels in chunks of {s.size / 1e6:.0f}M: state "
              f"{m.tally.state_bytes() / 2**20:.1f} MiB, tracemalloc peak {peak / 2**20:.1f} MiB "
              f"(incl. per-chunk temporaries; target state <= 50 MB)")


def component_frame(rng, shape=(1024, 2048), n_objects=20):
    label = np.zeros(shape, np.uint8)
    label[:100] = 255  # sky / void strip
    score = rng.random(shape, dtype=np.float32) * 0.45
    for _ in range(n_objects):
        y, x = rng.integers(100, shape[0] - 150), rng.integers(0, shape[1] - 150)
        h, w = rng.integers(8, 150, size=2)
        label[y:y + h, x:x + w] = 1
        dy, dx = rng.integers(-10, 10, size=2)
        score[max(y + dy, 0):y + dy + h, max(x + dx, 0):x + dx + w] += 0.3
    for _ in range(n_objects // 2):  # false positives
        y, x = rng.integers(100, shape[0] - 60), rng.integers(0, shape[1] - 60)
        score[y:y + rng.integers(5, 60), x:x + rng.integers(5, 60)] += 0.6
    return score, label


def bench_components(rng, n_frames: int, n_loop_frames: int, repeats: int) -> None:
    distinct = [component_frame(rng) for _ in range(min(n_frames, 5))]
    frames = [distinct[i % len(distinct)] for i in range(n_frames)]
    threshold = 0.5

    def vectorised():
        m = ComponentMetrics(track="anomaly")
        for s, y in frames:
            m.update(s, y, threshold)
        return m.compute()

    def loop():
        for s, y in frames[:n_loop_frames]:
            reference_frame_scores(s, y, threshold, 500, 100)

    t_vec = median_time(vectorised, repeats)
    t_loop = median_time(loop, 1) * n_frames / n_loop_frames
    result = vectorised()
    print(f"[component] {n_frames} frames 1024x2048, {result['n_gt_components'] / n_frames:.1f} GT and "
          f"{result['n_pred_components'] / n_frames:.1f} predicted components per frame: vectorised {t_vec:.2f}s, "
          f"np.isin loop {t_loop:.2f}s (timed on {n_loop_frames} frames, extrapolated) -> "
          f"{t_loop / t_vec:.1f}x faster (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a fast check")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_pixels = 2_000_000 if args.quick else 20_000_000
    repeats = 3
    bench_pixel_speed(rng, n_pixels, repeats)
    bench_pixel_memory(rng, n_pixels)
    bench_components(rng, 10 if args.quick else 100, 1 if args.quick else 3, repeats if args.quick else 1)


if __name__ == "__main__":
    main()
