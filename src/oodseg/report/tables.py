"""Ranking tables per dataset: metric columns, best value per column, text renderings.

Fractions (AP, AUROC, FPR95, sIoU, PPV, mean F1, ECE) are shown in percent with two
decimals, AuSE with four decimals; a metric missing from a results file is ``—``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from oodseg.report.loading import Evaluation

MISSING = "—"


@dataclass(frozen=True)
class Column:
    """A metric column: ``key`` in Evaluation.metrics, header ``label``, direction and unit."""

    key: str
    label: str
    group: str
    higher_is_better: bool = True
    percent: bool = True

    @property
    def header(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        return f"{self.label} {arrow}"


PIXEL_COLUMNS = (Column("AP", "AP", "pixel"), Column("AUROC", "AUROC", "pixel"),
                 Column("FPR95", "FPR95", "pixel", higher_is_better=False))
COMPONENT_COLUMNS = (Column("sIoU", "sIoU", "component"), Column("PPV", "PPV", "component"),
                     Column("mean_F1", "mean F1", "component"))
CALIBRATION_COLUMNS = (Column("ECE", "ECE", "calibration", higher_is_better=False),
                       Column("AuSE", "AuSE", "calibration", higher_is_better=False, percent=False))


@dataclass(frozen=True)
class RankingTable:
    """Methods (rows) × metrics (columns) on one dataset.

    ``values[r][c]`` is the JSON number (or None), ``best[c]`` the row indices holding the
    best value of column c (all of them on a tie; empty when the column has no value).
    Rows are sorted by AP, best first, missing AP last.
    """

    dataset: str
    columns: tuple[Column, ...]
    labels: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    best: tuple[frozenset[int], ...]


def format_value(value: float | None, column: Column) -> str:
    """The text of a table cell: percent with 2 decimals, AuSE with 4, ``—`` when missing."""
    if value is None:
        return MISSING
    return f"{100 * value:.2f}" if column.percent else f"{value:.4f}"


def ranking_table(dataset: str, evaluations: list[Evaluation]) -> RankingTable:
    """The ranking table of one dataset; component/calibration columns only where some method has them."""
    columns = list(PIXEL_COLUMNS)
    for group in (COMPONENT_COLUMNS, CALIBRATION_COLUMNS):
        if any(ev.metrics[col.key] is not None for ev in evaluations for col in group):
            columns.extend(group)
    ordered = sorted(evaluations, key=lambda ev: (ev.metrics["AP"] is None, -(ev.metrics["AP"] or 0.0), ev.label))
    values = tuple(tuple(ev.metrics[col.key] for col in columns) for ev in ordered)
    best = []
    for c, col in enumerate(columns):
        present = [row[c] for row in values if row[c] is not None]
        if not present:
            best.append(frozenset())
            continue
        target = max(present) if col.higher_is_better else min(present)
        best.append(frozenset(r for r, row in enumerate(values) if row[c] == target))
    return RankingTable(dataset, tuple(columns), tuple(ev.label for ev in ordered), values, tuple(best))


def to_markdown(tables: list[RankingTable]) -> str:
    """All tables as GitHub markdown, one section per dataset, best values in bold."""
    parts = []
    for table in tables:
        header = ["method", *(col.header for col in table.columns)]
        lines = [f"## {table.dataset}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" + "---:|" * len(table.columns)]
        for r, (label, row) in enumerate(zip(table.labels, table.values)):
            cells = [f"**{format_value(v, col)}**" if r in table.best[c] else format_value(v, col)
                     for c, (col, v) in enumerate(zip(table.columns, row))]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(tables: list[RankingTable]) -> str:
    """All tables as one long CSV: dataset, method, metric, value (full precision, empty when missing)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "metric", "value"])
    for table in tables:
        for label, row in zip(table.labels, table.values):
            for col, value in zip(table.columns, row):
                writer.writerow([table.dataset, label, col.key, "" if value is None else repr(value)])
    return buffer.getvalue()


def to_json(tables: list[RankingTable]) -> dict:
    """All tables as the report's ``tables.json`` object (schema ``oodseg.report``, version 1)."""
    return {"schema": "oodseg.report", "version": 1, "tables": [
        {"dataset": t.dataset,
         "columns": [{"key": c.key, "higher_is_better": c.higher_is_better} for c in t.columns],
         "rows": [{"method": label, **{c.key: v for c, v in zip(t.columns, row)}}
                  for label, row in zip(t.labels, t.values)],
         "best": {c.key: sorted(t.labels[r] for r in t.best[i]) for i, c in enumerate(t.columns)}}
        for t in tables]}
