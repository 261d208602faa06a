"""SynthStreet training benchmark: baseline CE training, then entropy maximisation from it.

Prints steps/s, wall and CPU seconds of each run, val mIoU, and the ``entropy`` score's pooled
AP / FPR95 on the anomaly and obstacle tracks for both checkpoints (computed here with
scikit-learn, independently of ``oodseg.metrics``), plus the entropy-max / baseline ratios.
On a shared machine wall time is inflated; CPU seconds / threads estimate an idle machine.

    python benchmarks/train_synthstreet.py --data /tmp/synth --out /tmp/bench-train
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_curve

from oodseg.data import open_dataset
from oodseg.conventions import image_to_tensor
from oodseg.models import load_checkpoint
from oodseg.training import make_config
from oodseg.workflows.train import train


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_train(config) -> dict:
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train(config)
    summary["wall_s"], summary["cpu_s"] = time.perf_counter() - wall, cpu_seconds() - cpu
    return summary


@torch.no_grad()
def entropy_ap_fpr95(checkpoint: Path, root: Path, kind: str) -> tuple[float, float]:
    """Pooled AP and FPR95 of the normalised softmax entropy over all non-void pixels."""
    model, _ = load_checkpoint(checkpoint)
    scores, labels = [], []
    for sample in open_dataset(kind, root):
        probs = torch.softmax(model(image_to_tensor(sample.image)[None]).float(), dim=1)[0]
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(0) / np.log(probs.shape[0])
        valid = sample.label != 255
        scores.append(entropy.numpy()[valid])
        labels.append(sample.label[valid])
    score, label = np.concatenate(scores), np.concatenate(labels)
    fpr, tpr, _ = roc_curve(label, score)
    return float(average_precision_score(label, score)), float(fpr[np.argmax(tpr >= 0.95)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="SynthStreet root (oodseg synth --out DIR)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--baseline-steps", type=int, default=None)
    parser.add_argument("--emax-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true", help="reuse OUT/baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    if not args.skip_baseline:
        results["baseline"] = timed_train(make_config("baseline", data=str(args.data), out=str(args.out / "baseline"),
                                                      steps=args.baseline_steps, overwrite=True))
    else:
        results["baseline"] = json.loads((args.out / "baseline" / "train.json").read_text())
    results["entropy-max"] = timed_train(make_config(
        "entropy-max", data=str(args.data), out=str(args.out / "emax"), steps=args.emax_steps, overwrite=True,
        init=str(args.out / "baseline" / "checkpoint")))
    for name, summary in results.items():
        for track, kind in (("anomaly", "smiyc-anomaly"), ("obstacle", "smiyc-obstacle")):
            summary[f"{track}_AP"], summary[f"{track}_FPR95"] = entropy_ap_fpr95(
                Path(summary["checkpoint"]), args.data / track, kind)
        rate = summary["steps"] / summary["wall_s"] if "wall_s" in summary else float("nan")
        print(f"{name:12s} steps {summary['steps']:5d}  wall {summary.get('wall_s', float('nan')):7.1f} s  "
              f"cpu {summary.get('cpu_s', float('nan')):7.1f} s  steps/s {rate:5.2f}  "
              f"val mIoU {100 * summary['val_mIoU']:5.2f}  anomaly AP {100 * summary['anomaly_AP']:5.2f} "
              f"FPR95 {100 * summary['anomaly_FPR95']:5.2f}  obstacle AP {100 * summary['obstacle_AP']:5.2f} "
              f"FPR95 {100 * summary['obstacle_FPR95']:5.2f}")
    base, emax = results["baseline"], results["entropy-max"]
    for key in ("anomaly_AP", "obstacle_AP", "anomaly_FPR95", "obstacle_FPR95"):
        print(f"ratio entropy-max / baseline {key}: {emax[key] / base[key]:.3f}")
    print(f"val mIoU change: {100 * (emax['val_mIoU'] - base['val_mIoU']):+.2f} points")
    (args.out / "benchmark.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
