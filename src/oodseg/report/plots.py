"""Matplotlib charts of the report (Agg canvas, no pyplot state), each written as one PNG.

Each ``plot_*`` function writes ``path`` and returns the Figure (for inspection in tests).

Every function takes validated results (oodseg.report.loading) and a ``colours`` map
method label → colour, so a method has the same colour in every chart.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from oodseg.report.loading import Evaluation, Training

DPI = 100
PANEL_COLUMNS = 5
INLIER_COLOUR, ANOMALY_COLOUR = "#3b7dd8", "#e8590c"
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.color": "#e5e5e5", "grid.linewidth": 0.6, "axes.edgecolor": "#888888"}


def method_colours(labels: list[str]) -> dict[str, tuple]:
    """A distinct colour per method label (tab10 up to 10 methods, tab20 up to 20, then cycling)."""
    unique = sorted(set(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _figure(width: float, height: float, left: float = 0.6, right: float = 0.2, bottom: float = 0.5,
            top: float = 0.35, wspace: float = 0.3, hspace: float = 0.6) -> Figure:
    """A ``width`` × ``height`` inch figure with fixed margins in inches (no layout engine: one draw per save)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace, hspace=hspace)
    return fig


def _save(fig: Figure, path: Path) -> Figure:
    fig.savefig(path, dpi=DPI, format="png")
    return fig


def _grid(n_panels: int, panel_w: float = 2.7, panel_h: float = 2.2, top: float = 0.35) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` small-multiple axes, PANEL_COLUMNS per row; unused axes removed."""
    cols = min(PANEL_COLUMNS, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = _figure(panel_w * cols, panel_h * rows - 0.4 + top, top=top, wspace=0.35, hspace=0.75)
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def plot_pr_roc(evaluations: list[Evaluation], colours: dict, path: Path) -> Figure:
    """Precision–recall and ROC curves, one line per method; one legend (AP / AUROC in %) for both."""
    legend_columns = 1 if len(evaluations) <= 14 else 2
    legend_w = 2.6 * legend_columns
    with matplotlib.rc_context(STYLE):
        fig = _figure(2 * 3.8 + 0.5 + legend_w, 4.0, right=legend_w, wspace=0.28)
        ax_pr, ax_roc = fig.subplots(1, 2)
        for ev in evaluations:
            curves = ev.curves or {}
            label = f"{ev.label} ({_pct(ev.metrics['AP'])} / {_pct(ev.metrics['AUROC'])})"
            if "pr" in curves:
                ax_pr.plot(curves["pr"]["recall"], curves["pr"]["precision"], color=colours[ev.label], lw=1.4,
                           label=label)
            if "roc" in curves:
                ax_roc.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], color=colours[ev.label], lw=1.4,
                            label=label)
        ax_roc.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        ax_roc.axhline(0.95, color="#999999", lw=0.8, ls=":")
        for ax, title, xlabel, ylabel in ((ax_pr, "Precision–recall", "recall", "precision"),
                                          (ax_roc, "ROC", "false positive rate", "true positive rate")):
            ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        handles = {line.get_label(): line for ax in (ax_pr, ax_roc) for line in ax.lines
                   if not line.get_label().startswith("_")}
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="center left", frameon=False,
                       bbox_to_anchor=(1 - (legend_w - 0.15) / fig.get_figwidth(), 0.5), ncols=legend_columns,
                       title="method (AP / AUROC %)", title_fontsize=8, alignment="left")
        return _save(fig, path)


def plot_score_histograms(evaluations: list[Evaluation], path: Path) -> Figure:
    """Score densities of inlier vs anomalous pixels, one panel per method (from ``curves.hist``)."""
    with_hist = [ev for ev in evaluations if "hist" in (ev.curves or {})]
    with matplotlib.rc_context(STYLE):
        fig, axes = _grid(len(with_hist), top=0.6)
        for ax, ev in zip(axes, with_hist):
            hist = ev.curves["hist"]
            for key, colour in (("inlier", INLIER_COLOUR), ("anomaly", ANOMALY_COLOUR)):
                ax.stairs(hist[key], hist["edges"], fill=True, color=colour, alpha=0.35)
                ax.stairs(hist[key], hist["edges"], color=colour, lw=1.1, label=key)
            ax.set_title(ev.label)
            ax.set_yticks([])
            ax.set_xlabel("anomaly score")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper left", ncols=2, frameon=False)
        return _save(fig, path)


def plot_reliability(evaluations: list[Evaluation], path: Path) -> Figure:
    """Reliability diagrams (accuracy per confidence bin vs the diagonal), one panel per method."""
    with_rel = [ev for ev in evaluations if "reliability" in (ev.calibration or {})]
    with matplotlib.rc_context(STYLE):
        fig, axes = _grid(len(with_rel), panel_h=2.5)
        for ax, ev in zip(axes, with_rel):
            rel = ev.calibration["reliability"]
            conf, acc = np.asarray(rel["confidence"]), np.asarray(rel["accuracy"])
            filled = np.asarray(rel["count"]) > 0
            width = 1.0 / max(len(conf), 1)
            ax.bar(conf[filled], acc[filled], width=width * 0.9, color=INLIER_COLOUR, alpha=0.8, label="accuracy")
            ax.bar(conf[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width * 0.9,
                   color=ANOMALY_COLOUR, alpha=0.35, label="gap")
            ax.plot([0, 1], [0, 1], color="#555555", lw=0.8, ls="--")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                   title=f"{ev.label} — ECE {_pct(ev.metrics['ECE'])}%")
        axes[0].legend(frameon=False, loc="upper left")
        return _save(fig, path)


def plot_sparsification(evaluations: list[Evaluation], path: Path) -> Figure:
    """Sparsification curves (mean Brier score of the kept pixels) vs the oracle, one panel per method."""
    with_sp = [ev for ev in evaluations if "sparsification" in (ev.calibration or {})]
    with matplotlib.rc_context(STYLE):
        fig, axes = _grid(len(with_sp), panel_h=2.5)
        for ax, ev in zip(axes, with_sp):
            sp = ev.calibration["sparsification"]
            ax.fill_between(sp["fraction"], sp["oracle"], sp["model"], color=ANOMALY_COLOUR, alpha=0.2, lw=0)
            ax.plot(sp["fraction"], sp["model"], color=ANOMALY_COLOUR, lw=1.4, label="by score")
            ax.plot(sp["fraction"], sp["oracle"], color="#333333", lw=1.0, ls="--", label="oracle")
            ause = ev.metrics["AuSE"]
            ax.set(xlim=(0, 1), xlabel="fraction removed", ylabel="Brier score",
                   title=f"{ev.label} — AuSE {'—' if ause is None else f'{ause:.4f}'}")
        axes[0].legend(frameon=False, loc="upper right")
        return _save(fig, path)


def plot_meta_thresholds(meta: dict, path: Path) -> Figure:
    """Meta-OoD detection errors vs entropy threshold t, before (solid) and after (dashed) meta classification."""
    rows = sorted(meta["thresholds"], key=lambda row: row["t"])
    t = [row["t"] for row in rows]

    def series(stage: str, key: str) -> list[float]:
        return [np.nan if row[stage].get(key) is None else row[stage][key] for row in rows]

    with matplotlib.rc_context(STYLE):
        fig = _figure(11.0, 3.4, right=1.2, wspace=0.45)
        ax_err, ax_rate = fig.subplots(1, 2)
        for key, colour in (("FP", ANOMALY_COLOUR), ("FN", INLIER_COLOUR)):
            ax_err.plot(t, series("before", key), color=colour, marker="o", ms=3, lw=1.4, label=f"{key} before")
            ax_err.plot(t, series("after", key), color=colour, marker="o", ms=3, lw=1.4, ls="--",
                        label=f"{key} after")
        for key, colour in (("F1", "#2b8a3e"), ("miss_rate", "#862e9c")):
            name = "ε" if key == "miss_rate" else key
            ax_rate.plot(t, series("before", key), color=colour, marker="o", ms=3, lw=1.4, label=f"{name} before")
            ax_rate.plot(t, series("after", key), color=colour, marker="o", ms=3, lw=1.4, ls="--",
                         label=f"{name} after")
        ax_err.set(title="Segment errors", xlabel="entropy threshold t", ylabel="count")
        ax_rate.set(title="F1 and road miss rate ε", xlabel="entropy threshold t", ylim=(0, 1.02))
        for ax in (ax_err, ax_rate):
            ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return _save(fig, path)


def plot_training(training: Training, path: Path) -> Figure:
    """Loss (and every other numeric log term) vs step, and the learning rate vs step."""
    steps = np.array([record["step"] for record in training.log])
    terms = [key for key in training.log[0] if key not in ("step", "epoch", "lr")
             and all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in training.log)]
    with matplotlib.rc_context(STYLE):
        fig = _figure(10.0, 3.2, left=0.7, wspace=0.3)
        ax_loss, ax_lr = fig.subplots(1, 2)
        cmap = colormaps["tab10"]
        for i, key in enumerate(sorted(terms, key=lambda k: (k != "loss", k))):
            ax_loss.plot(steps, [r[key] for r in training.log], color=cmap(i % 10),
                         lw=1.6 if key == "loss" else 1.0, label=key)
        ax_loss.set(title=f"Training loss — {training.data['recipe']}", xlabel="step", ylabel="loss")
        if terms:
            ax_loss.legend(frameon=False, loc="upper right")
        if all("lr" in r for r in training.log):
            ax_lr.plot(steps, [r["lr"] for r in training.log], color="#333333", lw=1.2)
        ax_lr.set(title="Learning rate", xlabel="step", ylabel="lr")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        return _save(fig, path)
