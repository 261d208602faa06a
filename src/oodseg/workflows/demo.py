"""The end-to-end demo on the embedded SynthStreet benchmark (``oodseg demo`` / ``make demo``).

Every step is cached in the output folder, so a second run only redoes what is missing:

    OUT/data/                 SynthStreet (``oodseg synth``)
    OUT/train/baseline/       closed-set small model (``oodseg train --recipe baseline``)
    OUT/train/member-1/       a second baseline (other seed), the partner of the ``ensemble`` score
    OUT/scores/               every post-hoc score of SPEC §1 on both tracks (``oodseg score``), and
                              ``entropy`` on the validation track ``anomaly_val``
    OUT/evaluate/{track}/     one ``oodseg.evaluate`` JSON per method (``oodseg evaluate``)
    OUT/meta/anomaly_val.json Meta-OoD on the validation track: chooses the segment threshold t
    OUT/meta/anomaly.json     Meta-OoD false-positive removal on the entropy segments at that t (``oodseg meta``)
    OUT/results.{json,csv,md} the ranking tables
    OUT/report/               the HTML report (``oodseg report``)

``--family mask`` (or ``all``) trains and scores the small Mask2Former instead (or as well):
see :mod:`oodseg.workflows.demo_mask`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oodseg.atomic import write_json, write_text
from oodseg.errors import OodsegError, check_choice
from oodseg.layout import result_path, scores_dir
from oodseg.provenance import VERSION as MANIFEST_VERSION, read_manifest

TRACKS = ("anomaly", "obstacle")
# Every post-hoc score of SPEC §1 (``ensemble`` gets the second baseline as its partner).
DEMO_METHODS = ("msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd",
                "feature_norm", "n_max_logit", "n_energy", "n_energy_cw", "pgn", "mc_dropout", "ensemble",
                "odin", "mahalanobis")
#: what the demo trains and scores: the per-pixel family (SPEC §1), the mask-classification one (SPEC §9), both
FAMILIES = ("pixel", "mask", "all")
#: Training overrides of ``--quick`` runs (tiny crops and batches, validation kept for val mIoU).
QUICK_TRAINING = {"batch_size": 2, "crop_size": 32, "validate": True, "log_every": 1, "ckpt_every": 1000}


@dataclass
class DemoConfig:
    """What the demo runs. ``quick`` shrinks data and training for tests (minutes → seconds).

    ``family``: ``"pixel"`` (the per-pixel scores of SPEC §1 on the small DeepLabv3+-style model),
    ``"mask"`` (the small Mask2Former and its detectors, SPEC §9, :mod:`oodseg.workflows.demo_mask`;
    ``mask_steps`` / ``rba_steps`` its training steps) or ``"all"``. Tables and report cover every
    evaluation in ``out``, so a mask run after a pixel run (or ``"all"``) ranks both side by side.
    """

    out: Path = Path("demo-out")
    seed: int = 0
    size: tuple[int, int] = (256, 512)
    frames: dict[str, int] | None = None
    train_steps: int | None = None
    member_steps: int | None = None
    methods: tuple[str, ...] = DEMO_METHODS
    family: str = "pixel"
    mask_steps: int | None = None
    rba_steps: int | None = None
    report_frames: int = 4
    quick: bool = False
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.quick:
            self.size = (64, 128) if self.size == (256, 512) else self.size
            self.frames = self.frames or {"train": 12, "val": 4, "anomaly": 4, "obstacle": 4, "shifted": 1,
                                          "outliers": 4, "anomaly_val": 4, "obstacle_val": 2}
            self.train_steps = self.train_steps or 6
            self.member_steps = self.member_steps or 3
            self.mask_steps = self.mask_steps or 4
            self.rba_steps = self.rba_steps or 2
            self.report_frames = min(self.report_frames, 2)
        check_choice("family", self.family, FAMILIES)
        unknown = sorted(set(self.methods) - set(DEMO_METHODS))
        if unknown:
            raise OodsegError(f"methods: {unknown[0]!r} is not a demo method (choose from {', '.join(DEMO_METHODS)})")


def run_demo(config: DemoConfig) -> dict:
    """Run (or resume) the whole demo; return ``{"tables": ..., "timings": ..., "out": ...}``."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    data = _step(config, "synth", lambda: _synth(config))
    evaluations = []
    if config.family in ("pixel", "all"):
        evaluations += _pixel_family(config, data)
    if config.family in ("mask", "all"):
        from oodseg.workflows.demo_mask import run_mask_family

        evaluations += _step(config, "mask family", lambda: run_mask_family(config, data, TRACKS))
    tables = _step(config, "tables", lambda: _write_tables(config))
    if config.report_frames >= 0:
        _step(config, "report", lambda: _report(config))
    write_json(out / "timings.json", config.timings)
    return {"out": str(out.resolve()), "tables": tables, "timings": config.timings, "evaluations": len(evaluations)}


def _pixel_family(config: DemoConfig, data: Path) -> list[dict]:
    """The per-pixel demo: baseline (+ ensemble member), every SPEC §1 score on both tracks, Meta-OoD."""
    baseline = _step(config, "train baseline", lambda: train_model(config, data, "baseline", seed=config.seed,
                                                                   steps=config.train_steps))
    member = None
    if "ensemble" in config.methods:
        member = _step(config, "train ensemble member", lambda: train_model(config, data, "member-1", seed=config.seed + 1,
                                                                           steps=config.member_steps or config.train_steps,
                                                                           member=True))
    for track in TRACKS:
        _step(config, f"score {track}", lambda: score_track(config, data, baseline, member, track))
    evaluations = []
    for track in TRACKS:
        evaluations += _step(config, f"evaluate {track}", lambda: evaluate_track(config, data, track))
    if "entropy" in config.methods:
        _step(config, "meta anomaly", lambda: meta_anomaly(config, data, baseline))
    return evaluations


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


def train_model(config: DemoConfig, data: Path, name: str, seed: int, steps: int | None, member: bool = False,
                recipe: str = "baseline", **options) -> Path:
    """Train (or reuse) a model on SynthStreet ``data`` into ``OUT/train/{name}`` with ``recipe`` (default: the
    closed-set baseline) and further TrainConfig ``options``; return its checkpoint."""
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
    overrides = {"seed": seed, **options}
    if steps is not None:
        overrides["steps"] = steps
    if member:  # the ensemble partner: same recipe, another seed; a third of the steps keeps the demo short
        overrides.setdefault("steps", max(1, make_config("baseline").steps // 3))
    if config.quick:
        overrides.update(QUICK_TRAINING)
    resume = (out / "trainer_state.pt").is_file()
    train_config = make_config(recipe, data=str(data), out=str(out), resume=resume, **overrides)
    summary = train(train_config)
    config.log(f"[demo]   {name}: {summary['steps']} steps in {summary['seconds']:.0f} s, "
               f"val mIoU {_pct(summary.get('val_mIoU'))}")
    return out / "checkpoint"


def score_track(config: DemoConfig, data: Path, checkpoint: Path, member: Path | None, track: str,
                methods: tuple[str, ...] | None = None) -> None:
    """Score SynthStreet ``track`` with ``methods`` (default: the config's) into ``OUT/scores/{method}/{track}``.

    The fitted scores (``sml``, ``mahalanobis``) are fitted on frames of the Cityscapes-layout
    *train* split (``score_dataset(fit_data=...)``), never on a test or validation track.
    """
    score_cached(config, checkpoint, data, track, list(methods or config.methods), config.out / "scores",
                 fit_data=data / "cityscapes", ensemble=[member] if member else ())


def score_cached(config: DemoConfig, checkpoint: Path, data: Path, track: str, methods: list[str], scores: Path,
                 **options) -> None:
    """``score_dataset`` of SynthStreet ``track`` into ``scores``, skipped when every method's maps are complete;
    maps of an earlier oodseg (float16 files, one manifest for all methods) are redone."""
    from oodseg.workflows.score import score_dataset

    manifests = [read_manifest(scores, method, track) or {} for method in methods]
    outdated = any(m and (m.get("dtype") != "float32" or m.get("version") != MANIFEST_VERSION) for m in manifests)
    if all(m.get("complete") for m in manifests) and not outdated:
        config.log(f"[demo]   {track}: {scores.name}/ scores already complete (cached)")
        return
    score_dataset(checkpoint, data / track, methods, scores, dataset_name=track,
                  dataset_kind=f"smiyc-{track.removesuffix('_val')}", overwrite=outdated, **options)


def evaluate_track(config: DemoConfig, data: Path, track: str, runs: dict[str, Path] | None = None) -> list[dict]:
    """Evaluate every method's scores on ``track`` (best-F1 θ of the track, as SMIYC); cached per method.

    ``runs``: ``{method label: score folder}``; default every configured method under ``OUT/scores``.
    """
    from oodseg.data import open_dataset
    from oodseg.workflows.evaluate import default_protocol, evaluate_dataset

    dataset = open_dataset(f"smiyc-{track}", data / track)
    protocol = default_protocol(dataset.kind)  # smiyc: the official SegmentMeIfYouCan numbers
    if runs is None:
        runs = {method: scores_dir(config.out / "scores", method, track) for method in config.methods}
    results = []
    for method, folder in runs.items():
        path = result_path(config.out / "evaluate", track, method)
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("protocol", "exact") == protocol:  # results from before the protocol are redone
                results.append(cached)
                continue
        result = evaluate_dataset(dataset, folder, track=track, method=method, protocol=protocol)
        write_json(path, result)
        results.append(result)
    return results


def meta_anomaly(config: DemoConfig, data: Path, checkpoint: Path) -> dict:
    """Meta-OoD (entropy ≥ t segments, logistic meta classifier, image-grouped CV) with t chosen on ``anomaly_val``.

    On the validation track every t of the Meta-OoD table is run; the t with the best F1
    after removing the segments classified false positive (:func:`oodseg.workflows.selection.meta_threshold_from`)
    is then applied on the anomaly test track. Returns the test track's ``oodseg.meta`` result.
    """
    from oodseg.workflows.selection import meta_threshold_from

    path = config.out / "meta" / "anomaly.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if "segments_threshold_from" in cached:  # older demos fixed t = 0.3 on the test track: redo those
            return cached
    val_path = config.out / "meta" / "anomaly_val.json"
    if not val_path.is_file():
        score_track(config, data, checkpoint, None, "anomaly_val", methods=("entropy",))
        write_json(val_path, _meta_run(config, data, checkpoint, "anomaly_val", "entropy:0.3"))
    t, provenance = meta_threshold_from(val_path)
    config.log(f"[demo]   Meta-OoD t = {t:g} (best F1 after filtering on anomaly_val)")
    result = {**_meta_run(config, data, checkpoint, "anomaly", f"entropy:{t:g}"), "segments_threshold_from": provenance}
    write_json(path, result)
    return result


def _meta_run(config: DemoConfig, data: Path, checkpoint: Path, track: str, segments: str) -> dict:
    from oodseg.data import open_dataset
    from oodseg.workflows.meta import run_meta

    dataset = open_dataset("smiyc-anomaly", data / track)
    folds = min(5, len(dataset))
    return run_meta(dataset, probs=checkpoint, scores_dir=scores_dir(config.out / "scores", "entropy", track),
                    segments=segments, cv=f"image-kfold:{folds}", method="entropy")


def ranking_tables(evaluate_dir: Path) -> list:
    """One :class:`oodseg.report.tables.RankingTable` per dataset of the evaluations under ``evaluate_dir``."""
    from oodseg.report.loading import load_results
    from oodseg.report.tables import ranking_table

    results = load_results(evaluate_dir)
    return [ranking_table(dataset, evaluations) for dataset, evaluations in results.by_dataset().items()]


def _write_tables(config: DemoConfig) -> list[dict]:
    """Ranking tables of every evaluation as ``results.{json,csv,md}``; print them."""
    from oodseg.report.tables import to_csv, to_json, to_markdown

    tables = ranking_tables(config.out / "evaluate")
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
