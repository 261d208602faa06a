"""The run-folder layout: every path that ``oodseg score`` / ``evaluate`` / ``demo`` write or read.

A score run ``{out}`` (``oodseg score --out``)::

    {out}/{method}/{dataset}/{fid}.hdf5               one score map per frame (:func:`score_path`)
    {out}/_manifest/{dataset}/{method}.json           the provenance of one method's maps, schema
                                                      ``oodseg.score`` (:func:`manifest_path`)
    {out}/_prediction/{checkpoint}/{dataset}/{fid}.png argmax trainIds of the checkpoint whose weights'
                                                      sha256 starts with ``{checkpoint}`` (:func:`prediction_path`)
    {out}/.oodseg-score.lock                          held (``flock``) by the ``oodseg score`` writing there

Runs of oodseg before per-method provenance wrote one ``{out}/_manifest/{dataset}.json`` for all
methods and ``{out}/_prediction/{dataset}/`` (:func:`legacy_manifest_path`, :func:`legacy_predictions_dir`;
read only). A scores folder ``{out}/{method}/{dataset}`` (what ``evaluate --scores`` takes) names its
run (:func:`run_of`). Evaluation results are ``{results}/{dataset}/{method}.json`` (:func:`result_path`),
the layout the demo writes and ``oodseg report`` reads. Every name that becomes a path component is
checked (:func:`check_name`). Paths only: no file is touched here, so every package may import this module.
"""
from __future__ import annotations

import os
from pathlib import Path

from oodseg.errors import OodsegError

PREDICTION_DIR = "_prediction"
MANIFEST_DIR = "_manifest"
LOCK_FILE = ".oodseg-score.lock"


def check_name(argument: str, name: str) -> str:
    """``name`` when it is usable as one folder or file name; else OodsegError ``"<argument> '<name>': …"``.

    Refused: empty, ``/`` or ``\\``, NUL, a leading dot (``.``, ``..``, hidden names). Such names
    would write outside the output folder, nest folders, or hide the files.
    """
    if not isinstance(name, str) or not name:
        raise OodsegError(f"{argument} {name!r}: must be a non-empty name")
    for bad, what in (("/", "'/'"), ("\\", "'\\'"), ("\0", "NUL")):
        if bad in name:
            raise OodsegError(f"{argument} {name!r}: must be a single folder name (contains {what})")
    if name.startswith("."):
        raise OodsegError(f"{argument} {name!r}: must not start with '.' (., .. and hidden names are refused)")
    return name


def scores_dir(out: str | os.PathLike, method: str, dataset: str) -> Path:
    """``{out}/{method}/{dataset}``: the score files of one method on one dataset."""
    return Path(out) / check_name("method", method) / check_name("dataset", dataset)


def score_path(out: str | os.PathLike, method: str, dataset: str, fid: str, ext: str = "hdf5") -> Path:
    """``{out}/{method}/{dataset}/{fid}.{ext}``."""
    return scores_dir(out, method, dataset) / f"{fid}.{ext.lstrip('.')}"


def predictions_dir(out: str | os.PathLike, checkpoint: str, dataset: str) -> Path:
    """``{out}/_prediction/{checkpoint}/{dataset}``: the predicted trainIds of one checkpoint on one dataset."""
    return Path(out) / PREDICTION_DIR / check_name("checkpoint", checkpoint) / check_name("dataset", dataset)


def prediction_path(out: str | os.PathLike, checkpoint: str, dataset: str, fid: str) -> Path:
    """``{out}/_prediction/{checkpoint}/{dataset}/{fid}.png`` (argmax trainIds, uint8)."""
    return predictions_dir(out, checkpoint, dataset) / f"{fid}.png"


def manifests_dir(out: str | os.PathLike, dataset: str) -> Path:
    """``{out}/_manifest/{dataset}``: the manifests of every method scored on one dataset."""
    return Path(out) / MANIFEST_DIR / check_name("dataset", dataset)


def manifest_path(out: str | os.PathLike, method: str, dataset: str) -> Path:
    """``{out}/_manifest/{dataset}/{method}.json``: the provenance of ``scores_dir(out, method, dataset)``."""
    return manifests_dir(out, dataset) / f"{check_name('method', method)}.json"


def legacy_manifest_path(out: str | os.PathLike, dataset: str) -> Path:
    """``{out}/_manifest/{dataset}.json``: one manifest for every method (oodseg before per-method provenance)."""
    return Path(out) / MANIFEST_DIR / f"{check_name('dataset', dataset)}.json"


def legacy_predictions_dir(out: str | os.PathLike, dataset: str) -> Path:
    """``{out}/_prediction/{dataset}``: the predictions of a legacy run (see :func:`legacy_manifest_path`)."""
    return Path(out) / PREDICTION_DIR / check_name("dataset", dataset)


def lock_path(out: str | os.PathLike) -> Path:
    """``{out}/.oodseg-score.lock``: the file ``oodseg score`` locks while it writes into ``out``."""
    return Path(out) / LOCK_FILE


def run_of(scores: str | os.PathLike) -> tuple[Path, str, str]:
    """``(out, method, dataset)`` of a scores folder ``{out}/{method}/{dataset}``."""
    scores = Path(scores).expanduser().absolute()
    return scores.parent.parent, scores.parent.name, scores.name


def result_path(results: str | os.PathLike, dataset: str, method: str) -> Path:
    """``{results}/{dataset}/{method}.json``: one ``oodseg evaluate`` result."""
    return Path(results) / check_name("dataset", dataset) / f"{check_name('method', method)}.json"
