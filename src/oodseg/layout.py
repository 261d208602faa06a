"""The run-folder layout: every path that ``oodseg score`` / ``evaluate`` / ``demo`` write or read.

A score run ``{out}`` (``oodseg score --out``)::

    {out}/{method}/{dataset}/{fid}.hdf5     one score map per frame (:func:`score_path`)
    {out}/_prediction/{dataset}/{fid}.png   argmax trainIds, uint8 (:func:`prediction_path`)
    {out}/_manifest/{dataset}.json          the run's description, schema ``oodseg.score`` (:func:`manifest_path`)

A scores folder ``{out}/{method}/{dataset}`` (what ``evaluate --scores`` takes) names its run
(:func:`run_of`). Evaluation results are ``{results}/{dataset}/{method}.json``
(:func:`result_path`), the layout the demo writes and ``oodseg report`` reads. Paths only: no
file is touched here, so every package may import this module.
"""
from __future__ import annotations

import os
from pathlib import Path

PREDICTION_DIR = "_prediction"
MANIFEST_DIR = "_manifest"


def scores_dir(out: str | os.PathLike, method: str, dataset: str) -> Path:
    """``{out}/{method}/{dataset}``: the score files of one method on one dataset."""
    return Path(out) / method / dataset


def score_path(out: str | os.PathLike, method: str, dataset: str, fid: str, ext: str = "hdf5") -> Path:
    """``{out}/{method}/{dataset}/{fid}.{ext}``."""
    return scores_dir(out, method, dataset) / f"{fid}.{ext.lstrip('.')}"


def predictions_dir(out: str | os.PathLike, dataset: str) -> Path:
    """``{out}/_prediction/{dataset}``: the predicted trainIds of one dataset."""
    return Path(out) / PREDICTION_DIR / dataset


def prediction_path(out: str | os.PathLike, dataset: str, fid: str) -> Path:
    """``{out}/_prediction/{dataset}/{fid}.png`` (argmax trainIds, uint8)."""
    return predictions_dir(out, dataset) / f"{fid}.png"


def manifest_path(out: str | os.PathLike, dataset: str) -> Path:
    """``{out}/_manifest/{dataset}.json``."""
    return Path(out) / MANIFEST_DIR / f"{dataset}.json"


def run_of(scores: str | os.PathLike) -> tuple[Path, str]:
    """``(out, dataset)`` of a scores folder ``{out}/{method}/{dataset}``."""
    scores = Path(scores)
    return scores.parent.parent, scores.name


def result_path(results: str | os.PathLike, dataset: str, method: str) -> Path:
    """``{results}/{dataset}/{method}.json``: one ``oodseg evaluate`` result."""
    return Path(results) / dataset / f"{method}.json"
