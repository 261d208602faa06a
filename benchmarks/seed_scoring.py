"""Memory and time of scoring one frame with NVIDIA's DeepWV3Plus (WideResNet38 DeepLabv3+) on the CPU.

Two child processes, each building ``DeepWV3Plus(19)`` (random weights, eval mode) and one random
RGB frame, measure:

* ``forward``: the bare forward pass ``model(images)`` under ``torch.no_grad``;
* ``scoring``: what ``oodseg score`` does per frame: the adapter's forward pass (capturing ``z`` and
  the ``conv→BN→ReLU`` block), every logits-only score (msp, entropy, variation_ratio, margin,
  max_logit, sml fitted on that frame, energy, jsd) and PGN's 20 maps (2 labels × p ∈ {0.1, 0.3,
  0.5, 1, 2} × last and second-to-last layer, ``variant="paper"``, ``log_scale=True``) at the classifier's resolution,
  each map upsampled to the frame (``align_corners=True``) and the argmax prediction.

Each child reports its wall seconds (the work only, after building the model) and its peak
resident set size (``VmHWM``, which includes the 548 MB of weights and the torch runtime); the
ratios scoring / forward are printed. ``--quick`` scores a 256×512 frame instead of 1024×2048.

Usage: ``python benchmarks/seed_scoring.py [--quick] [--threads N]`` (also ``oodseg bench seed_scoring``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LOGIT_SCORES = ["msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd"]
PGN_GRID = [{"label": label, "p": p, "layer": layer, "log_scale": True} for layer in ("last", "second_to_last")
            for label in ("onehot", "uniform") for p in (0.1, 0.3, 0.5, 1.0, 2.0)]


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return 1024 * int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def child(phase: str, height: int, width: int, threads: int) -> dict:
    """Run one phase in this process; its seconds and peak RSS."""
    import torch

    from oodseg import scores
    from oodseg.adapter import ModelAdapter
    from oodseg.conventions import resize_map
    from oodseg.models import DeepWV3Plus

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepWV3Plus(19).eval()
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    if phase == "forward":
        started = time.perf_counter()
        with torch.no_grad():
            model(images)
        return {"seconds": time.perf_counter() - started, "peak_rss": _peak_rss_bytes()}
    adapter = ModelAdapter(model, capture_block=True, probe_size=(64, 64))
    started = time.perf_counter()
    with torch.no_grad():
        out = adapter(images)
        chosen = [scores.get("sml").fit([out]) if name == "sml" else scores.get(name) for name in LOGIT_SCORES]
        chosen += [scores.get("pgn", **grid) for grid in PGN_GRID]
        maps = scores.compute(chosen, out)
        maps = {key: resize_map(value, (height, width), out.align_corners) for key, value in maps.items()}
        out.upsampled_logits().argmax(dim=1).to(torch.uint8)
    return {"seconds": time.perf_counter() - started, "peak_rss": _peak_rss_bytes(), "maps": len(maps),
            "head": list(out.logits.shape)}


def run_child(phase: str, height: int, width: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run([sys.executable, __file__, "--child", phase, "--size", f"{height}x{width}",
                              "--threads", str(threads)], env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"{phase} failed: {process.stderr[-2000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 256×512 frame instead of 1024×2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("forward", "scoring"), help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        height, width = (int(v) for v in args.size.split("x"))
        print(json.dumps(child(args.child, height, width, args.threads)))
        return
    height, width = (256, 512) if args.quick else (1024, 2048)
    forward = run_child("forward", height, width, args.threads)
    scoring = run_child("scoring", height, width, args.threads)
    print(f"DeepWV3Plus(19), one {height}×{width} frame, CPU, {args.threads} threads; scoring = adapter forward + "
          f"{len(LOGIT_SCORES)} logits-only scores + {len(PGN_GRID)} PGN maps at the head {tuple(scoring['head'])}, "
          f"upsampled, + argmax")
    print(f"{'':<10}{'seconds':>9}{'peak RSS MB':>13}")
    for name, result in (("forward", forward), ("scoring", scoring)):
        print(f"{name:<10}{result['seconds']:>9.1f}{result['peak_rss'] / 1e6:>13.0f}")
    print(f"ratio scoring / forward: time {scoring['seconds'] / forward['seconds']:.2f}×, "
          f"peak RSS {scoring['peak_rss'] / forward['peak_rss']:.2f}×")


if __name__ == "__main__":
    main()
