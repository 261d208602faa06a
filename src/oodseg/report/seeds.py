"""Results over several seeds: mean ± standard deviation and the "beats the baseline" rule.

``std`` is the sample standard deviation (``ddof=1``) over the seeds; with one seed it is
undefined (``None``) and no claim is made. A candidate *beats* a reference on a metric when
their one-standard-deviation intervals do not overlap in the better direction: for a metric
where higher is better ``mean_c - std_c > mean_r + std_r``, where lower is better
``mean_c + std_c < mean_r - std_r``. This is stricter than comparing means, and ignores the
pairing by seed on purpose (the per-seed wins are reported next to it, see :func:`seeds_better`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from oodseg.errors import OodsegError
from oodseg.report.tables import Column, RankingTable


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; OodsegError unless distinct non-negative integers."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise OodsegError(f"seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one metric over ``n`` seeds (``None`` when undefined)."""

    mean: float | None
    std: float | None
    n: int


def spread(values: Sequence[float | None]) -> Spread:
    """Mean and sample std (ddof=1) of the finite values; a missing value (None/NaN) is left out."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(present)
    if n == 0:
        return Spread(None, None, 0)
    mean = math.fsum(present) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


def beats(candidate: Spread, reference: Spread, higher_is_better: bool = True) -> bool | None:
    """Whether ``candidate`` beats ``reference`` by the one-std interval rule (None: fewer than 2 seeds each)."""
    if candidate.std is None or reference.std is None:
        return None
    if higher_is_better:
        return candidate.mean - candidate.std > reference.mean + reference.std
    return candidate.mean + candidate.std < reference.mean - reference.std


def seeds_better(candidate: Sequence[float], reference: Sequence[float], higher_is_better: bool = True) -> int:
    """On how many seeds (paired by position) the candidate's value is strictly better."""
    if len(candidate) != len(reference):
        raise ValueError(f"{len(candidate)} candidate values but {len(reference)} reference values")
    return sum((c > r) if higher_is_better else (c < r) for c, r in zip(candidate, reference))


def format_spread(value: Spread, percent: bool = True) -> str:
    """``"17.37 ± 0.52"`` (percent, 2 decimals), ``"17.37"`` for one seed, ``"—"`` when missing."""
    if value.mean is None:
        return "—"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{scale * value.mean:.{digits}f}"
    return text if value.std is None else f"{text} ± {scale * value.std:.{digits}f}"


@dataclass(frozen=True)
class SeedTable:
    """Methods × metrics of one dataset over seeds; rows sorted by mean of the first column (best first)."""

    dataset: str
    columns: tuple[Column, ...]
    labels: tuple[str, ...]
    cells: tuple[tuple[Spread, ...], ...]
    seeds: tuple[int, ...]


def seed_tables(per_seed: dict[int, Sequence[RankingTable]]) -> list[SeedTable]:
    """Combine each seed's ranking tables (:func:`oodseg.report.tables.ranking_table`) per dataset, method and column.

    A method or column missing from some seed's table counts as a missing value there.
    """
    seeds = tuple(sorted(per_seed))
    datasets: dict[str, list[RankingTable]] = {}
    for seed in seeds:
        for table in per_seed[seed]:
            datasets.setdefault(table.dataset, []).append(table)
    out = []
    for dataset, tables in datasets.items():
        columns = tuple(dict.fromkeys(col for table in tables for col in table.columns))
        labels = tuple(dict.fromkeys(label for table in tables for label in table.labels))
        values = {(table_index, label, col.key): row[table.columns.index(col)]
                  for table_index, table in enumerate(tables) for label, row in zip(table.labels, table.values)
                  for col in table.columns}
        cells = [tuple(spread([values.get((i, label, col.key)) for i in range(len(tables))]) for col in columns)
                 for label in labels]
        head = columns[0]
        order = sorted(range(len(labels)), key=lambda r: (cells[r][0].mean is None,
                                                          -(cells[r][0].mean or 0.0) if head.higher_is_better
                                                          else (cells[r][0].mean or 0.0), labels[r]))
        out.append(SeedTable(dataset, columns, tuple(labels[r] for r in order), tuple(cells[r] for r in order), seeds))
    return out


def seeds_markdown(tables: Sequence[SeedTable]) -> str:
    """Each table as GitHub markdown: ``mean ± std`` over the seeds in every cell, ``(n=k)`` when only k seeds have it."""
    parts = []
    for table in tables:
        lines = [f"## {table.dataset} (mean ± std over seeds {', '.join(map(str, table.seeds))})", "",
                 "| method | " + " | ".join(col.header for col in table.columns) + " |",
                 "|---|" + "---:|" * len(table.columns)]
        for label, row in zip(table.labels, table.cells):
            cells = [format_spread(v, col.percent) + (f" (n={v.n})" if 0 < v.n < len(table.seeds) else "")
                     for col, v in zip(table.columns, row)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def seeds_json(tables: Sequence[SeedTable]) -> dict:
    """The tables as JSON (schema ``oodseg.seeds`` version 1): per row and column ``{mean, std, n}``."""
    return {"schema": "oodseg.seeds", "version": 1, "std": "sample standard deviation (ddof=1) over the seeds",
            "tables": [{"dataset": t.dataset, "seeds": list(t.seeds),
                        "columns": [{"key": c.key, "higher_is_better": c.higher_is_better} for c in t.columns],
                        "rows": [{"method": label, **{c.key: {"mean": v.mean, "std": v.std, "n": v.n}
                                                      for c, v in zip(t.columns, row)}}
                                 for label, row in zip(t.labels, t.cells)]} for t in tables]}
