"""OoD-training results on SynthStreet: baseline vs entropy-max, NFlowJS and RPL (SPEC §2).

Reproduces the whole comparison with the library functions behind the CLI (the equivalent
``oodseg`` command of every step is printed before it runs):

1. ``oodseg synth --out DATA`` (skipped when DATA already holds the default SynthStreet);
2. ``oodseg train --recipe baseline`` (or ``--baseline RUN`` reuses a finished run folder);
3. for each recipe ``oodseg train --recipe R --init BASELINE/checkpoint --time-budget S``;
4. ``oodseg score`` of the baseline and of every fine-tuned model on the anomaly and obstacle
   tracks with the recipe's score (entropy-max → ``entropy``, nflowjs → ``jsd`` (T=2),
   rpl → ``energy``; the baseline with all three);
5. ``oodseg evaluate`` (exact pixel metrics + SMIYC component metrics; on the anomaly track also
   ``--segmentation``: mIoU and open-mIoU) of every score folder.

Prints one table per recipe (AP, FPR95 on both tracks, open-mIoU on the anomaly track, val mIoU,
fine-tuning steps and seconds, baseline vs recipe), the ratios recipe / baseline of AP and FPR95
(measured in this run), and writes ``OUT/results/*.json`` (schema ``oodseg.evaluate``, readable by ``oodseg report``),
``OUT/ood_training.json`` (everything) and ``OUT/ood_training.md`` (the tables).

Wall seconds on a shared machine are inflated; each run also reports its process CPU
seconds, and CPU seconds / ``--threads`` estimates the wall time of an idle machine.

    python benchmarks/ood_training.py --data /tmp/synth --out /tmp/ood-bench
    python benchmarks/ood_training.py --data /tmp/synth --out /tmp/ood-bench --baseline /tmp/base \\
        --recipes rpl --time-budget 600 -p rpl.energy_weight=0.05
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import time
from pathlib import Path

import torch

from oodseg.atomic import write_json, write_text
from oodseg.data import open_dataset
from oodseg.data.synthetic import MANIFEST_NAME, generate
from oodseg.errors import OodsegError
from oodseg.workflows.evaluate import evaluate_dataset
from oodseg.workflows.evaluate_semantic import evaluate_semantic, open_semantic_dataset, with_semantic
from oodseg.workflows.score import score_dataset
from oodseg.training import make_config
from oodseg.workflows.train import train

#: recipe -> the anomaly score it is meant to be read with (SPEC §2)
RECIPE_SCORES = {"entropy-max": "entropy", "nflowjs": "jsd", "rpl": "energy"}
SCORE_PARAMS = {"jsd": {"temperature": 2.0}, "energy": {"temperature": 1.0}}
TRACKS = {"anomaly": "smiyc-anomaly", "obstacle": "smiyc-obstacle"}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def show(command: str) -> None:
    print(f"$ {command}", flush=True)


def parse_recipe_params(items: list[str], recipes: list[str]) -> dict[str, dict]:
    """``["rpl.energy_weight=0.1", ...]`` → ``{"rpl": {"energy_weight": 0.1}}`` (values parsed as JSON when possible)."""
    params: dict[str, dict] = {name: {} for name in recipes}
    for item in items:
        key, sep, value = item.partition("=")
        recipe, dot, name = key.partition(".")
        if not sep or not dot or recipe not in params:
            raise OodsegError(f"-p {item}: expected RECIPE.KEY=VALUE with RECIPE one of {', '.join(recipes)}")
        try:
            params[recipe][name] = json.loads(value)
        except json.JSONDecodeError:
            params[recipe][name] = value
    return params


def run_training(recipe: str, data: Path, out: Path, init: Path | None, steps: int | None,
                 time_budget: float | None, params: dict) -> dict:
    """Train one recipe (overwriting ``out``) and return its summary plus wall and CPU seconds."""
    flags = [f"--recipe {recipe}", f"--data {data}", f"--out {out}", "--overwrite"]
    flags += [f"--init {init}"] if init else []
    flags += [f"--steps {steps}"] if steps else []
    flags += [f"--time-budget {time_budget:g}"] if time_budget else []
    flags += [f"-p {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in params.items()]
    show("oodseg train " + " ".join(flags))
    config = make_config(recipe, data=str(data), out=str(out), init=str(init) if init else None, steps=steps,
                         time_budget=time_budget, recipe_params=params, overwrite=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train(config)
    return {**summary, "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1)}


def score_and_evaluate(name: str, checkpoint: Path, methods: list[str], data: Path, out: Path) -> dict:
    """Score ``checkpoint`` on both tracks with ``methods`` and evaluate; ``{track: {method: result}}``."""
    results: dict[str, dict] = {}
    for track, kind in TRACKS.items():
        root = data / track
        params = {m: SCORE_PARAMS[m] for m in methods if m in SCORE_PARAMS}
        show(f"oodseg score --checkpoint {checkpoint} --images {root} "
             + " ".join(f"--method {m}" for m in methods)
             + "".join(f" --param {m}.{k}={v:g}" for m, p in params.items() for k, v in p.items())
             + f" --out {out / 'scores' / name} --overwrite")
        summary = score_dataset(checkpoint, root, methods, out / "scores" / name, params=params,
                                dataset_kind=kind, overwrite=True)
        dataset = open_dataset(kind, root)
        results[track] = {}
        for method in methods:
            scores_dir = out / "scores" / name / method / summary["dataset"]
            json_path = out / "results" / f"{name}__{method}__{track}.json"
            show(f"oodseg evaluate --dataset {kind} --root {root} --scores {scores_dir} --track {track} "
                 f"--method {name}:{method} --json {json_path} --overwrite")
            result = evaluate_dataset(dataset, scores_dir, track=track, method=f"{name}:{method}")
            if track == "anomaly":  # SynthStreet ships trainId labels here: mIoU and open-mIoU (NFlowJS reports it)
                show(f"  (the same with --segmentation --probs {checkpoint})")
                semantic = evaluate_semantic(open_semantic_dataset(kind, root), scores_dir, checkpoint,
                                             method=f"{name}:{method}")
                result = with_semantic(result, semantic)
            write_json(json_path, result)
            results[track][method] = result
    return results


def recipe_table(recipe: str, base: dict, tuned: dict, base_eval: dict, tuned_eval: dict) -> list[str]:
    """Markdown rows: baseline and recipe with the recipe's score, plus the recipe / baseline ratios."""
    method = RECIPE_SCORES[recipe]
    header = (f"| model (score `{method}`) | anomaly AP | anomaly FPR95 | obstacle AP | obstacle FPR95 | "
              "anomaly open-mIoU | val mIoU | fine-tuning steps | seconds (wall / CPU) |")
    rows = [header, "|" + "---|" * 9]
    for label, summary, evals in (("baseline", base, base_eval), (recipe, tuned, tuned_eval)):
        metrics = [evals[t][method][k] for t in TRACKS for k in ("AP", "FPR95")]
        metrics.append(evals["anomaly"][method]["segmentation"]["open_mIoU"])
        steps = "—" if summary is base else str(summary["steps"])
        seconds = "—" if summary is base else f"{summary['wall_s']:.0f} / {summary['cpu_s']:.0f}"
        rows.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in metrics)
                    + f" | {100 * summary['val_mIoU']:.2f} | {steps} | {seconds} |")
    ratios = [tuned_eval[t][method][k] / base_eval[t][method][k] for t in TRACKS for k in ("AP", "FPR95")]
    rows.append("| ratio recipe / baseline | " + " | ".join(f"{r:.3f}" for r in ratios)
                + f" | | {100 * (tuned['val_mIoU'] - base['val_mIoU']):+.2f} pts | | |")
    return rows


def beats_baseline(recipe: str, base: dict, tuned: dict, base_eval: dict, tuned_eval: dict) -> bool:
    """Higher AP and lower FPR95 on both tracks, val mIoU at most 2 points below the baseline."""
    method = RECIPE_SCORES[recipe]
    better = all(tuned_eval[t][method]["AP"] > base_eval[t][method]["AP"]
                 and tuned_eval[t][method]["FPR95"] < base_eval[t][method]["FPR95"] for t in TRACKS)
    return better and tuned["val_mIoU"] >= base["val_mIoU"] - 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="SynthStreet root (generated when missing)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, scores, results)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="finished baseline run folder (train.json + checkpoint/) to reuse")
    parser.add_argument("--baseline-steps", type=int, default=None, help="baseline steps (recipe default)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPE_SCORES), choices=list(RECIPE_SCORES))
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds of fine-tuning per recipe")
    parser.add_argument("--steps", action="append", default=[], metavar="RECIPE=N",
                        help="fine-tuning steps of a recipe (default: the recipe's; the time budget still applies)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="RECIPE.KEY=VALUE",
                        help="recipe parameter, repeatable")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the reference CPU machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = parse_recipe_params(args.param, args.recipes)
    steps = {k: int(v) for k, _, v in (s.partition("=") for s in args.steps)}

    if not (args.data / MANIFEST_NAME).is_file():
        show(f"oodseg synth --out {args.data}")
        generate(args.data)
    if args.baseline is not None:
        base = json.loads((args.baseline / "train.json").read_text())
        if base.get("recipe") != "baseline":
            raise OodsegError(f"--baseline: {args.baseline}/train.json is a {base.get('recipe')!r} run, not baseline")
    else:
        base = run_training("baseline", args.data, args.out / "baseline", None, args.baseline_steps, None, {})
    base_ckpt = (args.baseline or args.out / "baseline") / "checkpoint"

    runs = {}
    for recipe in args.recipes:
        runs[recipe] = run_training(recipe, args.data, args.out / recipe, base_ckpt, steps.get(recipe),
                                    args.time_budget, params[recipe])
    base_eval = score_and_evaluate("baseline", base_ckpt, sorted({RECIPE_SCORES[r] for r in args.recipes}),
                                   args.data, args.out)
    tuned_eval = {r: score_and_evaluate(r, Path(runs[r]["checkpoint"]), [RECIPE_SCORES[r]], args.data, args.out)
                  for r in args.recipes}

    lines, verdicts = [], {}
    for recipe in args.recipes:
        lines += [f"### {recipe}", ""] + recipe_table(recipe, base, runs[recipe], base_eval, tuned_eval[recipe]) + [""]
        verdicts[recipe] = beats_baseline(recipe, base, runs[recipe], base_eval, tuned_eval[recipe])
        lines.append(f"{recipe} beats the baseline on both tracks within 2 mIoU points: "
                     f"{'yes' if verdicts[recipe] else 'NO'}")
        lines.append("")
    text = "\n".join(lines)
    print("\n" + text)
    strip = lambda r: {k: {m: {x: v for x, v in res.items() if x != "curves"} for m, res in d.items()}  # noqa: E731
                       for k, d in r.items()}
    write_json(args.out / "ood_training.json", {
        "baseline": base, "runs": runs, "threads": args.threads, "time_budget": args.time_budget,
        "baseline_eval": strip(base_eval), "recipe_eval": {r: strip(e) for r, e in tuned_eval.items()},
        "beats_baseline": verdicts})
    write_text(args.out / "ood_training.md", text + "\n")


if __name__ == "__main__":
    main()
