"""OoD-training results on SynthStreet: baseline vs entropy-max, NFlowJS and RPL (SPEC §2), over seeds.

Reproduces the whole comparison with the library functions behind the CLI (the equivalent
``oodseg`` command of every step is printed before it runs):

1. ``oodseg synth --out DATA`` (skipped when DATA already holds SynthStreet; the validation
   tracks ``anomaly_val``/``obstacle_val`` are added to a folder of an earlier oodseg);
2. per seed s of ``--seeds``: ``oodseg train --recipe baseline --seed s`` (or ``--baseline PATTERN``
   reuses finished run folders, ``{seed}`` filled in, e.g. ``/work/runs/base-s{seed}``);
3. choices (``--sweep RECIPE.KEY=V1,V2,...``): every candidate is fine-tuned from the first seed's
   baseline and scored on the tracks of ``--select-on`` (default ``val``: ``anomaly_val`` and
   ``obstacle_val``, never the test tracks); the candidate with the best mean AP of the recipe's
   score over the two tracks, among those within 2 val-mIoU points of the baseline, is kept;
4. per seed s and recipe: ``oodseg train --recipe R --init BASELINE_s/checkpoint --seed s --time-budget S``;
5. ``oodseg score`` of each baseline and fine-tuned model on the anomaly and obstacle *test* tracks
   with the recipe's score (entropy-max → ``entropy``, nflowjs → ``jsd`` (T=2), rpl → ``energy``;
   the baseline with all three) and ``oodseg evaluate`` (exact pixel metrics + SMIYC component
   metrics; on the anomaly track also ``--segmentation``: mIoU and open-mIoU).

Prints one table per recipe and seed (AP, FPR95 on both tracks, open-mIoU on the anomaly track, val
mIoU, fine-tuning steps and seconds, the ratios recipe / baseline), then, over the seeds, mean ±
sample std (ddof=1) of every column. "Beats the baseline" (:mod:`oodseg.report.seeds`): with two or
more seeds, on each of the four detection columns the recipe's one-std interval lies entirely on the
better side of the baseline's (AP: mean − std above the baseline's mean + std; FPR95: mean + std
below mean − std), and the mean val mIoU is at most 2 points below the baseline's; the number of
seeds on which the recipe is better (paired by seed) is printed next to it. With one seed the old
rule (better means on all four, within 2 mIoU points) is reported and marked as such.
Writes ``OUT/results/*.json`` (schema ``oodseg.evaluate``, readable by ``oodseg report``),
``OUT/ood_training.json`` (everything) and ``OUT/ood_training.md`` (the tables).

Wall seconds on a shared machine are inflated; each run also reports its process CPU
seconds, and CPU seconds / ``--threads`` estimates the wall time of an idle machine.

    python benchmarks/ood_training.py --data /tmp/synth --out /tmp/ood-bench
    python benchmarks/ood_training.py --data /work/runs/data --out /tmp/ood-seeds --seeds 0,1,2 \\
        --baseline '/work/runs/base-s{seed}'
    python benchmarks/ood_training.py --data /tmp/synth --out /tmp/ood-sel --baseline /tmp/base \\
        --recipes rpl --sweep rpl.energy_weight=0.02,0.05,0.1 --select-on val
    oodseg bench ood_training --quick      # 2 seeds, a few steps at 64×128: a smoke test
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import shlex
import tempfile
import time
from pathlib import Path

import torch

from oodseg import layout
from oodseg.atomic import write_json, write_text
from oodseg.data import open_dataset
from oodseg.data.synthetic import MANIFEST_NAME, complete, generate
from oodseg.workflows.demo import QUICK_TRAINING, DemoConfig
from oodseg.errors import OodsegError
from oodseg.keyvalue import parse_scoped, parse_value
from oodseg.report.seeds import beats, format_spread, parse_seeds, seeds_better, spread
from oodseg.training import make_config
from oodseg.workflows.evaluate import evaluate_dataset
from oodseg.workflows.evaluate_semantic import evaluate_semantic, open_semantic_dataset, with_semantic
from oodseg.workflows.score import score_dataset
from oodseg.workflows.train import train
from _cli import run_main  # noqa: E402  (benchmarks/ is on sys.path as a script and under oodseg bench)

#: recipe -> the anomaly score it is meant to be read with (SPEC §2)
RECIPE_SCORES = {"entropy-max": "entropy", "nflowjs": "jsd", "rpl": "energy"}
SCORE_PARAMS = {"jsd": {"temperature": 2.0}, "energy": {"temperature": 1.0}}
TRACKS = {"anomaly": "smiyc-anomaly", "obstacle": "smiyc-obstacle"}
VAL_TRACKS = {"anomaly_val": "smiyc-anomaly", "obstacle_val": "smiyc-obstacle"}
#: (track, metric, higher is better) of the detection columns, in table order
DETECTION = (("anomaly", "AP", True), ("anomaly", "FPR95", False), ("obstacle", "AP", True), ("obstacle", "FPR95", False))
MIOU_TOLERANCE = 0.02


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def show(command: str) -> None:
    print(f"$ {command}", flush=True)


def parse_recipe_params(items: list[str], recipes: list[str]) -> dict[str, dict]:
    """``["rpl.energy_weight=0.1", ...]`` → ``{"rpl": {"energy_weight": 0.1}}`` (values parsed as JSON when possible)."""
    scoped = parse_scoped(items, "-p", "RECIPE", "rpl.energy_weight=0.1")
    unknown = sorted(set(scoped) - set(recipes))
    if unknown:
        raise OodsegError(f"-p {unknown[0]}.*: {unknown[0]!r} is not one of the recipes {', '.join(recipes)}")
    return {name: scoped.get(name, {}) for name in recipes}


def parse_sweeps(items: list[str], recipes: list[str]) -> dict[str, list[dict]]:
    """``["rpl.energy_weight=0.05,0.1", ...]`` → ``{"rpl": [{"energy_weight": 0.05}, {"energy_weight": 0.1}]}``
    (the grid over all keys of a recipe); recipes without a sweep are left out."""
    axes: dict[str, dict[str, list]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        recipe, dot, name = key.partition(".")
        candidates = [parse_value(v) for v in values.split(",") if v.strip()]
        if not sep or not dot or recipe not in recipes or not candidates:
            raise OodsegError(f"--sweep {item}: expected RECIPE.KEY=V1,V2,... with RECIPE one of {', '.join(recipes)}")
        axes.setdefault(recipe, {})[name] = candidates
    return {recipe: [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
            for recipe, grid in axes.items()}


def baseline_run(pattern: str, seed: int, n_seeds: int) -> Path:
    """The finished baseline run folder of ``seed`` (``{seed}`` in ``pattern`` filled in)."""
    if "{seed}" not in pattern and n_seeds > 1:
        raise OodsegError(f"--baseline {pattern}: with several seeds it needs {{seed}}, e.g. /work/runs/base-s{{seed}}")
    run = Path(pattern.format(seed=seed))
    if not (run / "train.json").is_file() or not (run / "checkpoint" / "model.json").is_file():
        raise OodsegError(f"--baseline {run}: not a finished run folder (train.json and checkpoint/ expected)")
    return run


def run_training(recipe: str, data: Path, out: Path, init: Path | None, steps: int | None,
                 time_budget: float | None, params: dict, seed: int, overrides: dict | None = None) -> dict:
    """Train one recipe (overwriting ``out``) and return its summary plus wall and CPU seconds."""
    flags = [f"--recipe {recipe}", f"--data {data}", f"--out {out}", f"--seed {seed}", "--overwrite"]
    flags += [f"--init {init}"] if init else []
    flags += [f"--steps {steps}"] if steps else []
    flags += [f"--time-budget {time_budget:g}"] if time_budget else []
    flags += [f"-p {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in params.items()]
    show("oodseg train " + " ".join(flags) + (f"  (and {overrides})" if overrides else ""))
    config = make_config(recipe, data=str(data), out=str(out), init=str(init) if init else None, steps=steps,
                         time_budget=time_budget, recipe_params=params, overwrite=True, seed=seed, **(overrides or {}))
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train(config)
    return {**summary, "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1)}


def score_and_evaluate(name: str, checkpoint: Path, methods: list[str], data: Path, out: Path,
                       tracks: dict[str, str] = TRACKS) -> dict:
    """Score ``checkpoint`` on ``tracks`` (folder → kind) with ``methods`` and evaluate; ``{track: {method: result}}``.

    Open-mIoU (``--segmentation``) is added on the ``anomaly`` test track only.
    """
    results: dict[str, dict] = {}
    for track, kind in tracks.items():
        root = data / track
        component_track = kind.removeprefix("smiyc-")
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
            scores_dir = layout.scores_dir(out / "scores" / name, method, summary["dataset"])
            json_path = out / "results" / f"{name}__{method}__{track}.json"
            show(f"oodseg evaluate --dataset {kind} --root {root} --scores {scores_dir} --track {component_track} "
                 f"--method {name}:{method} --save {json_path} --overwrite")
            result = evaluate_dataset(dataset, scores_dir, track=component_track, method=f"{name}:{method}")
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
    """One seed: higher AP and lower FPR95 on both tracks, val mIoU at most 2 points below the baseline."""
    method = RECIPE_SCORES[recipe]
    better = all(tuned_eval[t][method]["AP"] > base_eval[t][method]["AP"]
                 and tuned_eval[t][method]["FPR95"] < base_eval[t][method]["FPR95"] for t in TRACKS)
    return better and tuned["val_mIoU"] >= base["val_mIoU"] - MIOU_TOLERANCE


def seed_columns(recipe: str, summary: dict, evals: dict) -> list[float]:
    """The values of one model on one seed: the four detection columns, anomaly open-mIoU, val mIoU."""
    method = RECIPE_SCORES[recipe]
    return [evals[t][method][k] for t, k, _ in DETECTION] + \
        [evals["anomaly"][method]["segmentation"]["open_mIoU"], summary["val_mIoU"]]


def verdict(base_values: list[list[float]], recipe_values: list[list[float]]) -> dict:
    """"Beats the baseline" over seeds. ``*_values[seed][column]`` in :func:`seed_columns` order.

    With two or more seeds: the one-std interval rule (:func:`oodseg.report.seeds.beats`) on each
    detection column and a mean val-mIoU drop of at most 2 points; with one seed the means rule.
    Also the number of seeds on which the recipe is better, per detection column (paired by seed).
    """
    n = len(base_values)
    per_column, wins = [], []
    for c, (_, _, higher) in enumerate(DETECTION):
        base_c, recipe_c = [v[c] for v in base_values], [v[c] for v in recipe_values]
        wins.append(seeds_better(recipe_c, base_c, higher))
        per_column.append(beats(spread(recipe_c), spread(base_c), higher) if n > 1 else wins[-1] == 1)
    miou = spread([v[-1] for v in recipe_values]).mean >= spread([v[-1] for v in base_values]).mean - MIOU_TOLERANCE
    return {"rule": "one-std intervals" if n > 1 else "single seed: means, no interval", "per_column": per_column,
            "seeds_better": wins, "n_seeds": n, "val_mIoU_within_2_points": bool(miou),
            "beats": bool(all(per_column) and miou)}


def spread_table(recipe: str, base_values: list[list[float]], recipe_values: list[list[float]], decision: dict) -> list[str]:
    """Markdown rows: mean ± std over seeds of baseline and recipe, the interval verdict and the per-seed wins."""
    method = RECIPE_SCORES[recipe]
    rows = [f"| model (score `{method}`), mean ± std over {decision['n_seeds']} seeds | anomaly AP | anomaly FPR95 | "
            "obstacle AP | obstacle FPR95 | anomaly open-mIoU | val mIoU |", "|" + "---|" * 7]
    for label, values in (("baseline", base_values), (recipe, recipe_values)):
        rows.append(f"| {label} | " + " | ".join(format_spread(spread([v[c] for v in values]))
                                                   for c in range(len(values[0]))) + " |")
    marks = ["yes" if b else ("no" if b is not None else "—") for b in decision["per_column"]]
    rows.append(f"| beats the baseline ({decision['rule']}) | " + " | ".join(marks) + " | | "
                + ("within 2 pts" if decision["val_mIoU_within_2_points"] else "**more than 2 pts lower**") + " |")
    rows.append("| seeds on which the recipe is better | "
                + " | ".join(f"{w}/{decision['n_seeds']}" for w in decision["seeds_better"]) + " | | |")
    return rows


def select(recipe: str, candidates: list[dict], params: dict, base: dict, base_run: Path, seed: int, args,
           overrides: dict, tracks: dict[str, str]) -> tuple[dict, list[dict]]:
    """Fine-tune every candidate from ``base_run``, evaluate on ``tracks``; return the chosen params and the log.

    Best mean AP of the recipe's score over the tracks among candidates within 2 val-mIoU points
    of the baseline (all candidates if none is).
    """
    method = RECIPE_SCORES[recipe]
    log = []
    for index, candidate in enumerate(candidates):
        trial = {**params, **candidate}
        name = f"select-{recipe}-{index}"
        run = run_training(recipe, args.data, args.out / "select" / name, base_run / "checkpoint",
                           args.step_counts.get(recipe), args.time_budget, trial, seed, overrides)
        evals = score_and_evaluate(name, Path(run["checkpoint"]), [method], args.data, args.out, tracks)
        mean_ap = sum(evals[t][method]["AP"] for t in tracks) / len(tracks)
        log.append({"params": candidate, "mean_AP": mean_ap, "val_mIoU": run["val_mIoU"],
                    **{f"{t}_{k}": evals[t][method][k] for t in tracks for k in ("AP", "FPR95")}})
    allowed = [e for e in log if e["val_mIoU"] >= base["val_mIoU"] - MIOU_TOLERANCE] or log
    chosen = max(allowed, key=lambda e: e["mean_AP"])
    return {**params, **chosen["params"]}, log


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="SynthStreet root (generated when missing)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (runs, scores, results)")
    parser.add_argument("--seeds", default="0", help="baseline and fine-tuning seeds, e.g. 0,1,2 (default 0)")
    parser.add_argument("--baseline", default=None,
                        help="finished baseline run folder (train.json + checkpoint/) to reuse; with several seeds a "
                             "pattern with {seed}, e.g. /work/runs/base-s{seed}")
    parser.add_argument("--baseline-steps", type=int, default=None, help="baseline steps (recipe default)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPE_SCORES), choices=list(RECIPE_SCORES))
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds of fine-tuning per recipe")
    parser.add_argument("--steps", action="append", default=[], metavar="RECIPE=N",
                        help="fine-tuning steps of a recipe (default: the recipe's; the time budget still applies)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="RECIPE.KEY=VALUE",
                        help="recipe parameter, repeatable")
    parser.add_argument("--sweep", action="append", default=[], metavar="RECIPE.KEY=V1,V2,...",
                        help="candidate values of a recipe parameter, chosen on --select-on (repeatable: the grid)")
    parser.add_argument("--select-on", choices=("val", "test"), default="val",
                        help="tracks on which --sweep chooses: val (anomaly_val, obstacle_val) or test (not advised)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the reference CPU machine)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny data (64×128), seeds 0,1, a few steps with tiny crops")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = parse_seeds("0,1" if args.quick and args.seeds == "0" else args.seeds)
    params = parse_recipe_params(args.param, args.recipes)
    sweeps = parse_sweeps(args.sweep, args.recipes)
    args.step_counts = {k: int(v) for k, _, v in (s.partition("=") for s in args.steps)}
    overrides = dict(QUICK_TRAINING) if args.quick else {}
    if args.quick:
        args.out = args.out or Path(tempfile.mkdtemp(prefix="ood-training-"))
        args.data = args.data or args.out / "data"
        args.step_counts = {r: args.step_counts.get(r, 2) for r in args.recipes}
        args.baseline_steps = args.baseline_steps or 4
        args.time_budget = None
    if args.data is None or args.out is None:
        raise OodsegError("--data and --out are required (or --quick)")

    bases, base_runs = {}, {}
    for seed in seeds if args.baseline is not None else ():  # checked before anything is written
        base_runs[seed] = baseline_run(args.baseline, seed, len(seeds))
        bases[seed] = json.loads((base_runs[seed] / "train.json").read_text())
        if bases[seed].get("recipe") != "baseline":
            raise OodsegError(f"--baseline: {base_runs[seed]}/train.json is a {bases[seed].get('recipe')!r} run")
    if not (args.data / MANIFEST_NAME).is_file():
        show(f"oodseg synth --out {args.data}")
        tiny = DemoConfig(quick=True)
        generate(args.data, **({"size": tiny.size, "frames": tiny.frames} if args.quick else {}))
    else:
        complete(args.data)  # a folder of an earlier oodseg gets the validation tracks
    for seed in seeds if args.baseline is None else ():
        base_runs[seed] = args.out / f"seed-{seed}" / "baseline"
        bases[seed] = run_training("baseline", args.data, base_runs[seed], None, args.baseline_steps, None, {},
                                   seed, overrides)

    selection = {}
    select_tracks = VAL_TRACKS if args.select_on == "val" else TRACKS
    for recipe, candidates in sweeps.items():
        params[recipe], selection[recipe] = select(recipe, candidates, params[recipe], bases[seeds[0]],
                                                   base_runs[seeds[0]], seeds[0], args, overrides, select_tracks)
        print(f"{recipe}: chose {params[recipe]} on {', '.join(select_tracks)}", flush=True)

    runs, base_eval, tuned_eval = {}, {}, {}
    for seed in seeds:
        ckpt = base_runs[seed] / "checkpoint"
        base_eval[seed] = score_and_evaluate(f"s{seed}-baseline", ckpt, sorted({RECIPE_SCORES[r] for r in args.recipes}),
                                             args.data, args.out)
        for recipe in args.recipes:
            runs[(seed, recipe)] = run_training(recipe, args.data, args.out / f"seed-{seed}" / recipe, ckpt,
                                                args.step_counts.get(recipe), args.time_budget, params[recipe], seed,
                                                overrides)
            tuned_eval[(seed, recipe)] = score_and_evaluate(f"s{seed}-{recipe}", Path(runs[(seed, recipe)]["checkpoint"]),
                                                            [RECIPE_SCORES[recipe]], args.data, args.out)

    lines, verdicts = [], {}
    for recipe in args.recipes:
        for seed in seeds:
            lines += [f"### {recipe}, seed {seed}", ""]
            lines += recipe_table(recipe, bases[seed], runs[(seed, recipe)], base_eval[seed], tuned_eval[(seed, recipe)])
            lines.append("")
        base_values = [seed_columns(recipe, bases[s], base_eval[s]) for s in seeds]
        recipe_values = [seed_columns(recipe, runs[(s, recipe)], tuned_eval[(s, recipe)]) for s in seeds]
        verdicts[recipe] = verdict(base_values, recipe_values)
        lines += [f"### {recipe} over seeds {', '.join(map(str, seeds))}", ""]
        lines += spread_table(recipe, base_values, recipe_values, verdicts[recipe]) + [""]
        lines.append(f"{recipe} beats the baseline on both tracks within 2 mIoU points ({verdicts[recipe]['rule']}): "
                     f"{'yes' if verdicts[recipe]['beats'] else 'NO'}")
        lines.append("")
    if selection:
        lines += ["### choices made on " + ", ".join(select_tracks), ""]
        lines += [f"- {recipe}: {json.dumps(entry)}" for recipe, log in selection.items() for entry in log]
        lines += [f"- chosen: {recipe} {json.dumps(params[recipe])}" for recipe in selection] + [""]
    text = "\n".join(lines)
    print("\n" + text)
    strip = lambda r: {k: {m: {x: v for x, v in res.items() if x != "curves"} for m, res in d.items()}  # noqa: E731
                       for k, d in r.items()}
    result = {
        "seeds": seeds, "baseline": {str(s): bases[s] for s in seeds},
        "runs": {f"{s}/{r}": run for (s, r), run in runs.items()}, "threads": args.threads,
        "time_budget": args.time_budget, "params": params, "select_on": args.select_on if sweeps else None,
        "selection": selection, "baseline_eval": {str(s): strip(e) for s, e in base_eval.items()},
        "recipe_eval": {f"{s}/{r}": strip(e) for (s, r), e in tuned_eval.items()}, "beats_baseline": verdicts}
    write_json(args.out / "ood_training.json", result)
    write_text(args.out / "ood_training.md", text + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
