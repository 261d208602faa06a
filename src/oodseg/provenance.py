"""Provenance of score maps: the ``oodseg.score`` manifest of one method's maps on one dataset.

``oodseg score`` writes ``{out}/_manifest/{dataset}/{method}.json`` (schema ``oodseg.score``,
version 2; :func:`oodseg.layout.manifest_path`) for every method it scores: the checkpoint
(path and weights sha256), the method's parameters, the protocol (resolution, smoothing,
preset, dtype), the dataset and where the checkpoint's predictions are. Each method has its
own, so adding a method or re-scoring one with another checkpoint never changes what the
others' maps are attributed to. :func:`read_manifest` also reads the single manifest per
dataset of earlier oodseg versions (version 1, ``{out}/_manifest/{dataset}.json``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from oodseg import layout
from oodseg.errors import OodsegError

SCHEMA = "oodseg.score"
VERSION = 2
#: Versions :func:`read_manifest` reads (1: one manifest for all methods of a dataset).
READ_VERSIONS = (1, 2)
#: Fields that must agree for a rerun to count as resuming the same method's maps.
IDENTITY = ("checkpoint_sha256", "method", "dataset_kind", "root", "params", "ensemble_sha256", "fit_data",
            "fit_frames", "dtype", "resolution", "smooth", "precision")
#: Values of identity fields that manifests written before the field existed imply.
IDENTITY_DEFAULTS = {"precision": "fp32"}


def checkpoint_id(weights_sha256: str) -> str:
    """The folder name of a checkpoint's predictions: the first 16 hex digits of its weights' sha256."""
    return weights_sha256[:16]


def _read(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OodsegError(f"{path}: unreadable score manifest ({type(exc).__name__}); pass --overwrite to "
                          "rescore") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA or obj.get("version") not in READ_VERSIONS:
        raise OodsegError(f"{path}: not an {SCHEMA} manifest of a known version ({', '.join(map(str, READ_VERSIONS))})")
    return obj


def read_manifest(out: str | os.PathLike, method: str, dataset: str) -> dict[str, Any] | None:
    """The manifest of ``{out}/{method}/{dataset}`` with ``path`` (its file) and ``predictions`` (absolute
    folder of the checkpoint's predictions), or None when no manifest describes that method.

    A legacy manifest (version 1) answers for the methods it lists, with ``checkpoint_sha256`` None.
    """
    path = layout.manifest_path(out, method, dataset)
    if path.is_file():
        manifest = _read(path)
        return {**manifest, "path": str(path), "predictions": str(Path(out) / manifest["predictions"])}
    legacy = layout.legacy_manifest_path(out, dataset)
    if not legacy.is_file():
        return None
    manifest = _read(legacy)
    if method not in manifest.get("methods", [method]):
        return None
    return {**manifest, "method": method, "params": manifest.get("params", {}).get(method), "checkpoint_sha256": None,
            "path": str(legacy), "predictions": str(layout.legacy_predictions_dir(out, dataset))}


def prediction_file(manifest: dict[str, Any], fid: str) -> Path:
    """The predicted trainIds PNG of frame ``fid`` by the checkpoint of ``manifest`` (:func:`read_manifest`)."""
    return Path(manifest["predictions"]) / f"{fid}.png"


def manifest_of(scores_dir: str | os.PathLike) -> dict[str, Any] | None:
    """:func:`read_manifest` of a scores folder ``{out}/{method}/{dataset}`` (None for any other folder)."""
    out, method, dataset = layout.run_of(scores_dir)
    try:
        layout.check_name("method", method)
        layout.check_name("dataset", dataset)
    except OodsegError:
        return None  # not a folder oodseg score writes
    return read_manifest(out, method, dataset)
