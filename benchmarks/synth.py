"""SynthStreet generation speed on one core: frames/s, against a reference measured in the same run.

Reference: PIL encoding the same RGB frames as PNG with default settings (what any writer
of the dataset must pay at least once per frame). Prints medians of repeats, in CPU seconds
of this process (robust on a shared machine) and wall seconds.

    python benchmarks/synth.py [--size 256x512] [--frames 40] [--repeats 3]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from oodseg.data.synthetic import generate, parse_size, render_frame  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, n = parse_size(args.size), args.frames
    render_frame(0, size, "anomaly")  # warm caches: noise tiles, photo cut-outs
    images = [render_frame(i, size).image for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    runs: dict[str, list[tuple[float, float]]] = {"render": [], "generate": [], "png reference": []}
    try:
        for r in range(args.repeats):
            runs["render"].append(timed(lambda: [render_frame(i, size) for i in range(n)]))
            frames = {"train": n, "val": 0, "anomaly": 0, "obstacle": 0, "shifted": 0, "outliers": 0}
            runs["generate"].append(timed(lambda: generate(tmp / f"run{r}", size=size, frames=frames, progress=False)))
            runs["png reference"].append(timed(lambda: [Image.fromarray(im).save(io.BytesIO(), "PNG") for im in images]))
        mixed = {"train": n // 2, "val": 0, "anomaly": n // 6, "obstacle": n // 6, "shifted": n // 24, "outliers": 0}
        runs["generate (mixed splits)"] = [timed(lambda: generate(tmp / "mixed", size=size, frames=mixed, progress=False))]
        n_mixed = sum(mixed.values()) + 3 * mixed["shifted"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reference = statistics.median(c for c, _ in runs["png reference"])
    print(f"SynthStreet {size[0]}x{size[1]}, {n} frames, median of {args.repeats} (1 thread)")
    print(f"{'stage':<26}{'frames/s (cpu)':>16}{'frames/s (wall)':>17}{'x png reference':>17}")
    for name, values in runs.items():
        count = n_mixed if name.startswith("generate (mixed") else n
        cpu, wall = statistics.median(c for c, _ in values), statistics.median(w for _, w in values)
        print(f"{name:<26}{count / cpu:>16.1f}{count / wall:>17.1f}{cpu / count / (reference / n):>17.2f}")


if __name__ == "__main__":
    main()
