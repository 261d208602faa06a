"""Report speed: 20 methods × 2 datasets with 8 example frames (target ≤ 30 s on 2 cores).

Builds a synthetic results folder (SMIYC layouts, hdf5 score files, evaluate/meta/train
JSONs; tests/fixtures/report/synthetic.py), then times ``build_report`` against a
reference measured in the same run: reading every input the report reads (results
JSONs, the example frames' images, labels and all methods' score files). Prints medians
of repeats and the ratio report / input reading.

    python benchmarks/report.py [--methods 20] [--frames 8] [--height 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OODSEG_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "report"))

from synthetic import write_results  # noqa: E402

from oodseg.data import find_score, open_dataset, read_score  # noqa: E402
from oodseg.report import load_results  # noqa: E402
from oodseg.workflows.report import build_report  # noqa: E402
from _timing import median_time  # noqa: E402

BUDGET_S = 30.0


def read_inputs(results_dir: Path, frames: int) -> None:
    """The reference: read what the report reads (JSONs, images, labels, score maps of the shown frames)."""
    groups = load_results(results_dir).by_dataset()
    for evaluations in groups.values():
        data = open_dataset(evaluations[0].data["dataset_kind"], evaluations[0].data["root"])
        step = max(1, len(data) // frames)
        for index in range(0, len(data), step)[:frames]:
            sample = data[index]
            for ev in evaluations:
                read_score(find_score(ev.data["scores"], sample.fid))




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=512, help="image height (width = 2 × height)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oodseg-bench-report-") as tmp:
        results = Path(tmp) / "results"
        start = time.perf_counter()
        write_results(results, methods=args.methods, frames=args.frames, shape=(args.height, 2 * args.height),
                      subsample=64)
        print(f"synthetic results: {args.methods} methods × 2 datasets × {args.frames} frames "
              f"at {args.height}×{2 * args.height} ({time.perf_counter() - start:.1f} s to generate)")
        reference = median_time(lambda: read_inputs(results, args.frames), args.repeats)
        out = Path(tmp) / "report"
        report = median_time(lambda: build_report(results, out, frames=args.frames, overwrite=True), args.repeats)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        print(f"read inputs (reference): median {reference:.2f} s over {args.repeats}")
        print(f"build_report:            median {report:.2f} s over {args.repeats} "
              f"({len(list(out.rglob('*.png')))} PNGs, {size:.1f} MiB)")
        print(f"ratio report / reading inputs: {report / reference:.1f}×; "
              f"budget {BUDGET_S:.0f} s: {'OK' if report <= BUDGET_S else 'OVER'} ({report / BUDGET_S:.2f} of budget)")


if __name__ == "__main__":
    main()
