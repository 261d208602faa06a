"""The demo's ranking over several training seeds: mean ± std of every demo method on both SynthStreet tracks.

For each seed s: the baseline trained with seed s (``--baseline PATTERN`` reuses finished runs,
e.g. ``/work/runs/base-s{seed}``; otherwise it is trained as the demo trains its baseline) and its
ensemble partner (``--member PATTERN``, otherwise trained as the demo does: seed s+1, a third of
the steps). Then, with the demo's own steps (:mod:`oodseg.workflows.demo`): every method scores both test
tracks (``sml``/``mahalanobis`` fitted on the Cityscapes-layout train split), evaluation (exact
pixel metrics, component metrics at each track's best-F1 θ, as SMIYC), and Meta-OoD with its
segment threshold t chosen on ``anomaly_val``. The data is one SynthStreet folder (data seed 0,
the demo's) for every training seed.

Writes ``OUT/seed-{s}/`` (the demo's folders per seed), ``OUT/demo_seeds.md`` and
``OUT/demo_seeds.json`` (schema ``oodseg.seeds``): mean ± sample std (ddof=1) per method and column,
and the Meta-OoD numbers likewise. ``make demo`` itself stays one seed (its 15-minute budget).

    python benchmarks/demo_seeds.py --data demo-out/data --baseline '/work/runs/base-s{seed}' --seeds 0,1,2 --out seeds-out
    oodseg bench demo_seeds --quick      # 2 seeds of tiny models on tiny data, a smoke test
"""
from __future__ import annotations

from pathlib import Path

from oodseg.errors import OodsegError
from oodseg.report.seeds import format_spread, seed_tables, seeds_json, seeds_markdown, spread
from oodseg.workflows.demo import (DEMO_METHODS, TRACKS, DemoConfig, evaluate_track, meta_anomaly, ranking_tables,
                                   score_track, train_model)
from _seeds import ensure_data, out_and_seeds, seed_parser, write_summary  # noqa: E402
from _cli import run_main  # noqa: E402  (benchmarks/ is on sys.path as a script and under oodseg bench)

QUICK_METHODS = ("msp", "entropy", "energy", "ensemble")
#: Meta-OoD numbers aggregated over seeds: (label, getter on the oodseg.meta result, percent)
META_FIELDS = (
    ("t (chosen on anomaly_val)", lambda m, row: row["t"], False),
    ("meta AUROC", lambda m, row: m["classification"]["AUROC"], True),
    ("mean-MSP AUROC", lambda m, row: m["classification"]["baseline_AUROC"], True),
    ("F1 before", lambda m, row: row["before"]["F1"], True),
    ("F1 after", lambda m, row: row["after"]["F1"], True),
    ("FP before", lambda m, row: row["before"]["FP"], False),
    ("FP after", lambda m, row: row["after"]["FP"], False),
    ("road miss rate before", lambda m, row: row["before"]["miss_rate"], True),
    ("road miss rate after", lambda m, row: row["after"]["miss_rate"], True),
)


def checkpoint_of(pattern: str, seed: int, option: str) -> Path:
    """The checkpoint folder of ``pattern`` (``{seed}`` filled in): a checkpoint itself or a run folder holding one."""
    if "{seed}" not in pattern:
        raise OodsegError(f"{option} {pattern!r}: needs {{seed}} in the path, e.g. /work/runs/base-s{{seed}}")
    path = Path(pattern.format(seed=seed))
    for candidate in (path, path / "checkpoint"):
        if (candidate / "model.json").is_file():
            return candidate
    raise OodsegError(f"{option} {path}: no checkpoint (model.json) there or in {path / 'checkpoint'}")


def meta_row(meta: dict) -> dict:
    """The row of the Meta-OoD table at the result's own segment threshold (``segments`` = ``entropy:t``)."""
    t = float(meta["segments"].partition(":")[2])
    return next(row for row in meta["thresholds"] if row["t"] == t)


def meta_table(metas: dict[int, dict]) -> tuple[str, dict]:
    """Markdown and JSON of the Meta-OoD numbers over seeds (mean ± std)."""
    lines = [f"## Meta-OoD, anomaly track (mean ± std over seeds {', '.join(map(str, metas))})", "",
             "| quantity | mean ± std |", "|---|---:|"]
    data = {}
    for label, get, percent in META_FIELDS:
        value = spread([get(m, meta_row(m)) for m in metas.values()])
        data[label] = {"mean": value.mean, "std": value.std, "n": value.n}
        lines.append(f"| {label} | {format_spread(value, percent) if percent else _plain(value)} |")
    return "\n".join(lines) + "\n", data


def _plain(value) -> str:
    if value.mean is None:
        return "—"
    return f"{value.mean:.3g}" if value.std is None else f"{value.mean:.3g} ± {value.std:.2g}"


def run_seed(seed: int, data: Path, out: Path, methods: tuple[str, ...], baseline: str | None, member: str | None,
             quick: bool) -> tuple[list, dict | None]:
    """The demo's score/evaluate/meta steps for one training seed; (ranking tables, Meta-OoD result or None)."""
    config = DemoConfig(out=out / f"seed-{seed}", seed=seed, methods=methods, quick=quick, report_frames=-1)
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_of(baseline, seed, "--baseline") if baseline else \
        train_model(config, data, "baseline", seed=seed, steps=config.train_steps)
    partner = None
    if "ensemble" in methods:
        partner = checkpoint_of(member, seed, "--member") if member else \
            train_model(config, data, "member-1", seed=seed + 1, steps=config.member_steps or config.train_steps,
                        member=True)
    for track in TRACKS:
        score_track(config, data, checkpoint, partner, track)
    for track in TRACKS:
        evaluate_track(config, data, track)
    meta = meta_anomaly(config, data, checkpoint) if "entropy" in methods else None
    return ranking_tables(config.out / "evaluate"), meta


def main(argv: list[str] | None = None) -> dict:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="baseline checkpoint or run folder per seed, with {seed}")
    parser.add_argument("--member", default=None, help="ensemble partner per seed, with {seed} (default: trained as the demo does)")
    parser.add_argument("--method", dest="methods", action="append", default=None, help="a demo method, repeatable (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny data, a few training steps, 4 methods (a smoke test)")
    args = parser.parse_args(argv)
    out, seeds = out_and_seeds(args, "demo-seeds-")
    methods = tuple(args.methods or (QUICK_METHODS if args.quick else DEMO_METHODS))
    shape = DemoConfig(out=out, quick=args.quick, methods=methods)  # validates the methods; data size and counts
    for seed in seeds:  # checked before anything is written
        for pattern, option in ((args.baseline, "--baseline"), (args.member if "ensemble" in methods else None, "--member")):
            if pattern:
                checkpoint_of(pattern, seed, option)
    data = args.data or out / "data"
    ensure_data(data, shape.size, shape.frames)
    per_seed, metas = {}, {}
    for seed in seeds:
        print(f"== seed {seed}", flush=True)
        per_seed[seed], meta = run_seed(seed, data, out, methods, args.baseline, args.member, args.quick)
        if meta is not None:
            metas[seed] = meta
    tables = seed_tables(per_seed)
    text = seeds_markdown(tables)
    result = seeds_json(tables)
    if metas:
        meta_text, result["meta"] = meta_table(metas)
        text += "\n" + meta_text
    result["data"], result["methods"] = str(Path(data).resolve()), list(methods)
    write_summary(out, "demo_seeds", text, result)
    return result


if __name__ == "__main__":
    run_main(main)
