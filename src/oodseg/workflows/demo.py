"""The end-to-end demo on the embedded SynthStreet benchmark (``oodseg demo`` / ``make demo``).

Every step is cached in the output folder, so a second run only redoes what is missing:

    OUT/data/                 SynthStreet (``oodseg synth``)
    OUT/train/baseline/       closed-set small model (``oodseg train --recipe baseline``)
    OUT/train/member-1/       a second baseline (other seed), the partner of the ``ensemble`` score
    OUT/scores/               every post-hoc score of SPEC §1 on both tracks (``oodseg score``)
    OUT/evaluate/{track}/     one ``oodseg.evaluate`` JSON per method (``oodseg evaluate``)
    OUT/meta/anomaly.json     Meta-OoD false-positive removal on the entropy segments (``oodseg meta``)
    OUT/results.{json,csv,md} the ranking tables
    OUT/report/               the HTML report (``oodseg report``)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oodseg.atomic import write_json, write_text
from oodseg.errors import OodsegError

TRACKS = ("anomaly", "obstacle")
# Every post-hoc score of SPEC §1 (``ensemble`` gets the second baseline as its partner).
DEMO_METHODS = ("msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd",
                "feature_norm", "n_max_logit", "n_energy", "n_energy_cw", "pgn", "mc_dropout", "ensemble",
                "odin", "mahalanobis")


@dataclass
class DemoConfig:
    """What the demo runs. ``quick`` shrinks data and training for tests (minutes → seconds)."""

    out: Path = Path("demo-out")
    seed: int = 0
    size: tuple[int, int] = (256, 512)
    frames: dict[str, int] | None = None
    train_steps: int | None = None
    member_steps: int | None = None
    methods: tuple[str, ...] = DEMO_METHODS
    report_frames: int = 4
    quick: bool = False
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.quick:
            self.size = (64, 128) if self.size == (256, 512) else self.size
            self.frames = self.frames or {"train": 12, "val": 4, "anomaly": 4, "obstacle": 4, "shifted": 1,
                                          "outliers": 4}
            self.train_steps = self.train_steps or 6
            self.member_steps = self.member_steps or 3
            self.report_frames = min(self.report_frames, 2)
        unknown = sorted(set(self.methods) - set(DEMO_METHODS))
        if unknown:
            raise OodsegError(f"--method {unknown[0]!r}: not a demo method (choose from {', '.join(DEMO_METHODS)})")


def run_demo(config: DemoConfig) -> dict:
    """Run (or resume) the whole demo; return ``{"tables": ..., "timings": ..., "out": ...}``."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    data = _step(config, "synth", lambda: _synth(config))
    baseline = _step(config, "train baseline", lambda: _train(config, "baseline", seed=config.seed,
                                                              steps=config.train_steps))
    member = None
    if "ensemble" in config.methods:
        member = _step(config, "train ensemble member", lambda: _train(config, "member-1", seed=config.seed + 1,
                                                                      steps=config.member_steps or config.train_steps,
                                                                      member=True))
    for track in TRACKS:
        _step(config, f"score {track}", lambda: _score(config, data, baseline, member, track))
    evaluations = []
    for track in TRACKS:
        evaluations += _step(config, f"evaluate {track}", lambda: _evaluate(config, data, track))
    if "entropy" in config.methods:
        _step(config, "meta anomaly", lambda: _meta(config, data, baseline))
    tables = _step(config, "tables", lambda: _write_tables(config))
    if config.report_frames >= 0:
        _step(config, "report", lambda: _report(config))
    write_json(out / "timings.json", config.timings)
    return {"out": str(out.resolve()), "tables": tables, "timings": config.timings, "evaluations": len(evaluations)}


def _step(config: DemoConfig, name: str, work: Callable):
    started = time.perf_counter()
    config.log(f"[demo] {name} …")
    result = work()
    config.timings[name] = round(time.perf_counter() - started, 2)
    config.log(f"[demo] {name}: {config.timings[name]:.1f} s")
    return result


def _synth(config: DemoConfig) -> Path:
    from oodseg.data.synthetic import generate

    root = config.out / "data"
    manifest = generate(root, seed=config.seed, size=config.size, frames=config.frames)
    if manifest.get("cached"):
        config.log("[demo]   SynthStreet already generated (cached)")
    return root


def _train(config: DemoConfig, name: str, seed: int, steps: int | None, member: bool = False) -> Path:
    """Train (or reuse) a closed-set baseline; return its checkpoint directory."""
    from oodseg.training import make_config
    from oodseg.workflows.train import train

    out = config.out / "train" / name
    summary_path = out / "train.json"
    if summary_path.is_file():
        from oodseg.models import load_checkpoint

        try:
            load_checkpoint(out / "checkpoint")
        except OodsegError as exc:
            raise OodsegError(f"{out}: the cached model no longer loads ({exc}); it comes from another oodseg "
                              f"version: remove {config.out} except data/ and run again") from exc
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        config.log(f"[demo]   {name}: reusing the trained checkpoint (val mIoU {_pct(summary.get('val_mIoU'))})")
        return out / "checkpoint"
    overrides = {"seed": seed}
    if steps is not None:
        overrides["steps"] = steps
    if member:  # the ensemble partner: same recipe, another seed; a third of the steps keeps the demo short
        overrides.setdefault("steps", max(1, make_config("baseline").steps // 3))
    if config.quick:
        overrides.update(batch_size=2, crop_size=32, validate=True, log_every=1, ckpt_every=1000)
    resume = (out / "trainer_state.pt").is_file()
    train_config = make_config("baseline", data=str(config.out / "data"), out=str(out), resume=resume,
                               **overrides)
    summary = train(train_config)
    config.log(f"[demo]   {name}: {summary['steps']} steps in {summary['seconds']:.0f} s, "
               f"val mIoU {_pct(summary.get('val_mIoU'))}")
    return out / "checkpoint"


def _score(config: DemoConfig, data: Path, checkpoint: Path, member: Path | None, track: str) -> None:
    from oodseg.workflows.score import manifest_path, score_dataset

    scores = config.out / "scores"
    previous = manifest_path(scores, track)
    if previous.is_file() and json.loads(previous.read_text(encoding="utf-8")).get("complete"):
        config.log(f"[demo]   {track}: scores already complete (cached)")
        return
    score_dataset(checkpoint, data / track, list(config.methods), scores, dataset_name=track,
                  fit_data=data / "cityscapes", ensemble=[member] if member else ())


def _evaluate(config: DemoConfig, data: Path, track: str) -> list[dict]:
    from oodseg.data import open_dataset
    from oodseg.workflows.evaluate import evaluate_dataset

    dataset = open_dataset(f"smiyc-{track}", data / track)
    results = []
    for method in config.methods:
        path = config.out / "evaluate" / track / f"{method}.json"
        if path.is_file():
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        result = evaluate_dataset(dataset, config.out / "scores" / method / track, track=track, method=method)
        write_json(path, result)
        results.append(result)
    return results


def _meta(config: DemoConfig, data: Path, checkpoint: Path) -> dict:
    """Meta-OoD on the anomaly track: entropy ≥ 0.3 segments, logistic meta classifier, image-grouped CV."""
    from oodseg.data import open_dataset
    from oodseg.workflows.meta import run_meta

    path = config.out / "meta" / "anomaly.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    dataset = open_dataset("smiyc-anomaly", data / "anomaly")
    folds = min(5, len(dataset))
    result = run_meta(dataset, probs=checkpoint, scores_dir=config.out / "scores" / "entropy" / "anomaly",
                      segments="entropy:0.3", cv=f"image-kfold:{folds}", method="entropy")
    write_json(path, result)
    return result


def _write_tables(config: DemoConfig) -> list[dict]:
    """Ranking tables of every evaluation as ``results.{json,csv,md}``; print them."""
    from oodseg.report.loading import load_results
    from oodseg.report.tables import ranking_table, to_csv, to_json, to_markdown

    results = load_results(config.out / "evaluate")
    tables = [ranking_table(dataset, evaluations) for dataset, evaluations in results.by_dataset().items()]
    write_json(config.out / "results.json", to_json(tables))
    write_text(config.out / "results.csv", to_csv(tables))
    write_text(config.out / "results.md", to_markdown(tables))
    _print_tables(tables)
    return to_json(tables)["tables"]


def _print_tables(tables) -> None:
    """Print each ranking table with rich; the best value of each column in bold green."""
    from rich.console import Console
    from rich.table import Table

    from oodseg.report.tables import format_value

    console = Console()
    for table in tables:
        view = Table(title=f"SynthStreet {table.dataset} track — ranked by AP (%)", header_style="bold")
        view.add_column("#", justify="right")
        view.add_column("method")
        for column in table.columns:
            view.add_column(column.header, justify="right")
        for rank, (label, row) in enumerate(zip(table.labels, table.values)):
            cells = [f"[bold green]{format_value(v, col)}[/]" if rank in best else format_value(v, col)
                     for col, v, best in zip(table.columns, row, table.best)]
            view.add_row(str(rank + 1), label, *cells)
        console.print(view)


def _report(config: DemoConfig) -> None:
    from oodseg.workflows.report import build_report

    summary = build_report(config.out, config.out / "report", frames=config.report_frames, overwrite=True)
    config.log(f"[demo]   report: {summary['index']}")


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"
