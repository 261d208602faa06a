"""``build_report``: results folder → one self-contained report folder (index.html + PNGs + tables)."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from PIL import Image

from oodseg.atomic import atomic_directory, write_json, write_text
from oodseg.errors import OodsegError
from oodseg.progress import track
from oodseg.report import plots
from oodseg.report.frames import colourbar_strip, render_frames, slug
from oodseg.report.html import DatasetSection, ExtraSection, render_page
from oodseg.report.loading import Evaluation, Results, Training, load_results
from oodseg.report.tables import ranking_table, to_csv, to_json, to_markdown

TOP_LARS_FEATURES = 8


def build_report(results_dir: str | Path, out: str | Path, frames: int = 4, overwrite: bool = False) -> dict:
    """Build the HTML report of every results file under ``results_dir`` into the folder ``out``.

    ``frames``: example frames per dataset (0 = none; they need the datasets and score
    files the evaluate JSONs point to). The folder is built next to ``out`` and renamed
    into place when complete; an existing non-empty ``out`` is replaced only with
    ``overwrite=True`` and only if it holds a previous report. Returns a summary dict
    (paths, counts, seconds).
    """
    start = time.perf_counter()
    if frames < 0:
        raise OodsegError(f"frames: must be >= 0, got {frames}")
    results = load_results(results_dir)
    out = Path(out).resolve()
    _check_out(out, results.root, overwrite)
    groups = results.by_dataset()
    tables = [ranking_table(dataset, evaluations) for dataset, evaluations in groups.items()]
    ranked = {t.dataset: [next(ev for ev in groups[t.dataset] if ev.label == label) for label in t.labels]
              for t in tables}
    colours = plots.method_colours([ev.label for ev in results.evaluations])

    with atomic_directory(out) as tmp:
        (tmp / "plots").mkdir()
        sections = []
        for i, table in enumerate(track(tables, "report: charts")):
            figures = _dataset_figures(i, ranked[table.dataset], colours, tmp)
            sections.append(DatasetSection(table, _dataset_caption(ranked[table.dataset]), figures,
                                           frames_after=int(bool(figures) and figures[0][1].endswith("-pr-roc.png"))))
        scales, colourbar = {}, None
        if frames and ranked:
            grids, scales = render_frames(ranked, frames, tmp / "frames", tmp)
            for section, grid in zip(sections, grids):
                section.frames = grid
            colourbar = "frames/colourbar.png"
            Image.fromarray(colourbar_strip()).save(tmp / colourbar)
        extras = [_meta_section(i, results, path, meta, tmp) for i, (path, meta) in enumerate(results.metas)]
        extras += [_training_section(i, results, training, tmp) for i, training in enumerate(results.trainings)]
        write_text(tmp / "tables.md", to_markdown(tables))
        write_text(tmp / "tables.csv", to_csv(tables))
        write_json(tmp / "tables.json", to_json(tables))
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = (f"{results.root} · {len(results.evaluations)} evaluations on {len(groups)} datasets · "
                    f"{len(results.metas)} meta · {len(results.trainings)} training runs · {stamp}")
        write_text(tmp / "index.html", render_page("oodseg report", subtitle, sections, extras, colours, scales,
                                                   colourbar, ["tables.md", "tables.csv", "tables.json"]))
    return {"out": str(out), "index": str(out / "index.html"), "datasets": list(groups),
            "methods": len(colours), "evaluations": len(results.evaluations), "meta": len(results.metas),
            "training": len(results.trainings), "frames_per_dataset": frames if ranked else 0,
            "seconds": round(time.perf_counter() - start, 3)}


def _check_out(out: Path, results_root: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that would lose data: a file, a non-empty folder (without overwrite), a non-report folder."""
    if out == results_root or out in results_root.parents:
        raise OodsegError(f"out {out}: must not contain the results folder {results_root}")
    if not out.exists():
        return
    if not out.is_dir():
        raise OodsegError(f"out {out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OodsegError(f"out {out}: folder exists and is not empty; pass overwrite=True to replace it")
    if not (out / "index.html").is_file():
        raise OodsegError(f"out {out}: not a previous report (no index.html); refusing to replace it")


def _dataset_caption(evaluations: list[Evaluation]) -> str:
    """One line about the data: kind, track, mode, protocol, frames, pixels, number of methods."""
    parts = []
    for key, name in (("dataset_kind", "kind"), ("track", "track"), ("mode", "mode"), ("protocol", "protocol"),
                      ("n_frames", "frames"), ("n_pixels", "pixels")):
        values = sorted({str(ev.data[key]) for ev in evaluations if ev.data.get(key) is not None})
        if key == "protocol":  # results written before the field existed were computed exact
            values = sorted({str(ev.data.get(key, "exact")) for ev in evaluations if "track" in ev.data})
        if values:
            parts.append(f"{name} {'/'.join(values)}")
    parts.append(f"{len(evaluations)} methods")
    return " · ".join(parts)


def _dataset_figures(index: int, evaluations: list[Evaluation], colours: dict,
                     report_dir: Path) -> list[tuple[str, str, str]]:
    """Charts of one dataset that its results support: (title, report-relative path, caption)."""
    name = f"plots/{index:02d}-{slug(evaluations[0].dataset)}"
    curves = [ev.curves or {} for ev in evaluations]
    calibration = [ev.calibration or {} for ev in evaluations]
    figures = []
    if any("pr" in c or "roc" in c for c in curves):
        plots.plot_pr_roc(evaluations, colours, report_dir / f"{name}-pr-roc.png")
        figures.append(("Precision–recall and ROC curves", f"{name}-pr-roc.png",
                        "Pooled over all valid pixels; dotted line: TPR 95% (FPR95)."))
    if any("hist" in c for c in curves):
        plots.plot_score_histograms(evaluations, report_dir / f"{name}-hist.png")
        figures.append(("Score distributions", f"{name}-hist.png",
                        "Density of the anomaly score on inlier (blue) and anomalous (orange) pixels."))
    if any("reliability" in c for c in calibration):
        plots.plot_reliability(evaluations, report_dir / f"{name}-reliability.png")
        figures.append(("Reliability diagrams", f"{name}-reliability.png",
                        "Accuracy per confidence bin; orange: gap to perfect calibration."))
    if any("sparsification" in c for c in calibration):
        plots.plot_sparsification(evaluations, report_dir / f"{name}-sparsification.png")
        figures.append(("Sparsification curves", f"{name}-sparsification.png",
                        "Mean Brier score of the pixels kept after removing the most uncertain; "
                        "shaded: area to the oracle (AuSE)."))
    return figures


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _meta_section(index: int, results: Results, path: Path, meta: dict, report_dir: Path) -> ExtraSection:
    classification = meta.get("classification") or {}
    regression = meta.get("regression") or {}
    facts = [("file", results.relative(path))]
    facts += [(key.replace("_", " "), _fmt(meta.get(key))) for key in ("segments", "model", "cv", "n_segments",
                                                                          "n_features") if key in meta]
    for key in ("AUROC", "AUPRC"):
        if key in classification:
            facts.append((f"meta classification {key}", f"{_fmt(classification[key])} "
                          f"(baseline {_fmt(classification.get(f'baseline_{key}'))})"))
    if "R2" in regression:
        facts.append(("meta regression R²", _fmt(regression["R2"])))
    lars = meta.get("lars") or []
    if lars:
        facts.append((f"LARS top {min(TOP_LARS_FEATURES, len(lars))}",
                      ", ".join(str(item[0]) for item in lars[:TOP_LARS_FEATURES])))
    section = ExtraSection(f"meta-{index}", f"Meta classification — {meta['dataset']}", facts)
    if meta["thresholds"]:
        rel = f"plots/meta-{index:02d}-{slug(meta['dataset'])}.png"
        plots.plot_meta_thresholds(meta, report_dir / rel)
        section.figures.append(("Detection errors vs entropy threshold", rel,
                                "Solid: all segments of entropy ≥ t; dashed: after removing segments "
                                "meta-classified as false positives."))
    return section


def _training_section(index: int, results: Results, training: Training, report_dir: Path) -> ExtraSection:
    data = training.data
    facts = [("file", results.relative(training.path)), ("recipe", data["recipe"])]
    facts += [(key.replace("_", " "), _fmt(data.get(key), 2 if key == "seconds" else 4))
              for key in ("steps", "seconds", "val_mIoU", "checkpoint") if key in data]
    section = ExtraSection(f"train-{index}", f"Training — {data['recipe']} "
                                             f"({results.relative(training.path.parent) or '.'})", facts)
    if training.log:
        rel = f"plots/train-{index:02d}-{slug(data['recipe'])}.png"
        plots.plot_training(training, report_dir / rel)
        section.figures.append(("Loss curves", rel, f"{len(training.log)} logged steps from log.jsonl."))
    else:
        section.notes.append("No log.jsonl next to train.json: no loss curves.")
    return section
