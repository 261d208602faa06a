"""Speed of the post-hoc scores, as ratios against references measured in the same run.

(a) every logits-only score (msp, entropy, variation_ratio, margin, max_logit, sml, energy,
    jsd) computed together by ``oodseg.scores.compute`` on a 19×1024×2048 logit map, against
    one ``torch.log_softmax`` over that map (target ≤ 2.5×);
(b) last-layer PGN for all 10 label/p combinations (2 labels × p ∈ {0.1, 0.3, 0.5, 1, 2}) on
    the head output of a 512×1024 image, against the forward pass of DeepLabv3+ ResNet-50 on
    that image (target ≤ 10 %).

Usage: ``python benchmarks/scores.py [--quick] [--repeats N] [--threads N]``; ``--quick``
quarters both sides of each map. Prints medians (seconds) and ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from oodseg import scores
from oodseg.adapter import ModelAdapter, SegOutput
from oodseg.scores import native

LOGIT_SCORES = ["msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd"]


def paired_ratio(reference: Callable[[], object], candidate: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``reference`` and ``candidate``, timed alternately (fair under a noisy load)."""
    reference(), candidate()
    ref_times, cand_times = [], []
    for _ in range(repeats):
        for work, times in ((reference, ref_times), (candidate, cand_times)):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
    return statistics.median(ref_times), statistics.median(cand_times)


def bench_logit_scores(height: int, width: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 19, height, width, generator=generator) * 4
    out = SegOutput(logits=logits)
    sml = scores.get("sml").fit([out])
    chosen = [sml if name == "sml" else scores.get(name) for name in LOGIT_SCORES]
    without_sml = [s for s in chosen if s.name != "sml"]
    reference, together = paired_ratio(lambda: torch.log_softmax(logits, dim=1),
                                       lambda: scores.compute(chosen, out), repeats)
    reference_again, unfitted = paired_ratio(lambda: torch.log_softmax(logits, dim=1),
                                             lambda: scores.compute(without_sml, out), repeats)
    return {"log_softmax_s": reference, "compute_s": together, "ratio": together / reference,
            "compute_without_sml_s": unfitted, "ratio_without_sml": unfitted / reference_again}


def bench_pgn(height: int, width: int, repeats: int) -> dict[str, float]:
    from oodseg.models import DeepLabV3Plus

    model = DeepLabV3Plus(num_classes=19, backbone="resnet50", output_stride=16).eval()
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    adapter = ModelAdapter(model)
    with torch.no_grad():
        out = adapter(images)
        chosen = [scores.get("pgn", label=label, p=p) for label in ("onehot", "uniform")
                  for p in (0.1, 0.3, 0.5, 1.0, 2.0)]
        forward, pgn = paired_ratio(lambda: model(images), lambda: scores.compute(chosen, out), repeats)
    return {"forward_s": forward, "pgn_all_10_s": pgn, "ratio": pgn / forward,
            "head_size": f"{tuple(out.features.shape)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quarter each side of the maps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = 4 if args.quick else 1
    a = bench_logit_scores(1024 // scale, 2048 // scale, args.repeats)
    print(f"(a) logits-only scores {LOGIT_SCORES} on 19×{1024 // scale}×{2048 // scale}: "
          f"compute {a['compute_s']:.3f}s, log_softmax {a['log_softmax_s']:.3f}s, "
          f"ratio {a['ratio']:.2f}× (target ≤ 2.5×); without sml {a['ratio_without_sml']:.2f}×; "
          f"C kernel {'used' if native.library() is not None else 'not built: torch only'}")
    b = bench_pgn(512 // scale, 1024 // scale, max(1, args.repeats // 2))
    print(f"(b) PGN 10 label/p combinations on {512 // scale}×{1024 // scale} (head {b['head_size']}): "
          f"pgn {b['pgn_all_10_s']:.3f}s, DeepLabv3+ R50 forward {b['forward_s']:.3f}s, "
          f"ratio {100 * b['ratio']:.1f}% (target ≤ 10%)")


if __name__ == "__main__":
    main()
