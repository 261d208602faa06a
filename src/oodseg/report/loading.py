"""Find and validate the results files under a folder (schemas in docs/results-schema.md).

Every JSON object with a ``"schema"`` key is a results file and must carry a known
schema and version; JSON files without one (checkpoint sidecars, dataset manifests) are
not results and are ignored. Files and folders whose name starts with ``.`` (temporary
files of atomic writes) are skipped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodseg.errors import OodsegError

SUPPORTED_VERSIONS = {"oodseg.evaluate": {1}, "oodseg.meta": {1}, "oodseg.train": {1},
                      "oodseg.score": {1, 2}, "oodseg.report": {1}, "oodseg.synth": {1}, "oodseg.seeds": {1}}
"""Schema name → versions this reader understands. ``oodseg.report`` (the report's own
``tables.json``) and ``oodseg.synth`` (a SynthStreet manifest) are known, so a report or a
dataset inside RESULTS_DIR is accepted, but they are not inputs."""

EVALUATE_METRICS = ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold", "sIoU", "PPV", "mean_F1")
CALIBRATION_METRICS = ("ECE", "AuSE")


@dataclass(frozen=True)
class Evaluation:
    """One ``oodseg.evaluate`` file: a method's results on a dataset.

    ``metrics`` maps every name of EVALUATE_METRICS and CALIBRATION_METRICS to a float or
    ``None`` (absent or ``null`` in the file). ``curves``/``calibration`` are the file's
    validated sub-objects or ``None``. ``label`` names the row in tables and legends.
    """

    path: Path
    data: dict
    metrics: dict[str, float | None]
    label: str

    @property
    def dataset(self) -> str:
        return self.data["dataset"]

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def curves(self) -> dict | None:
        return self.data.get("curves")

    @property
    def calibration(self) -> dict | None:
        return self.data.get("calibration")


@dataclass(frozen=True)
class Training:
    """One training run: ``train.json`` (``oodseg.train``) and the records of ``log.jsonl`` next to it."""

    path: Path
    data: dict
    log: list[dict]


@dataclass
class Results:
    """Everything found under a results folder, in a stable (path-sorted) order."""

    root: Path
    evaluations: list[Evaluation] = field(default_factory=list)
    metas: list[tuple[Path, dict]] = field(default_factory=list)
    trainings: list[Training] = field(default_factory=list)
    score_manifests: list[tuple[Path, dict]] = field(default_factory=list)

    def by_dataset(self) -> dict[str, list[Evaluation]]:
        """Evaluations grouped by dataset name (datasets and methods in sorted order)."""
        groups: dict[str, list[Evaluation]] = {}
        for ev in sorted(self.evaluations, key=lambda e: (e.dataset, e.label)):
            groups.setdefault(ev.dataset, []).append(ev)
        return groups

    def relative(self, path: Path) -> str:
        """``path`` relative to the results folder, for captions and messages."""
        return path.relative_to(self.root).as_posix()


def load_results(results_dir: str | Path) -> Results:
    """Read and validate every results file under ``results_dir`` (recursively).

    Raises OodsegError (one line, naming the file) for a missing folder, an unreadable or
    corrupt JSON, an unknown schema/version, a malformed field, or when no results file
    is found at all.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise OodsegError(f"{root}: results folder does not exist")
    results = Results(root=root.resolve())
    raw_evaluations: list[tuple[Path, dict]] = []
    for path in _result_candidates(results.root):
        obj = read_json(path)
        if not isinstance(obj, dict) or "schema" not in obj:
            continue
        schema, version = obj["schema"], obj.get("version")
        if schema not in SUPPORTED_VERSIONS:
            raise OodsegError(f"{path}: unknown results schema {schema!r} "
                              f"(known: {', '.join(sorted(SUPPORTED_VERSIONS))})")
        if version not in SUPPORTED_VERSIONS[schema]:
            raise OodsegError(f"{path}: unsupported version {version!r} of schema {schema!r} "
                              f"(supported: {sorted(SUPPORTED_VERSIONS[schema])})")
        if schema == "oodseg.evaluate":
            raw_evaluations.append((path, _check_evaluate(path, obj)))
        elif schema == "oodseg.meta":
            results.metas.append((path, _check_meta(path, obj)))
        elif schema == "oodseg.train":
            results.trainings.append(Training(path, _check_train(path, obj), _read_log(path.parent / "log.jsonl")))
        elif schema == "oodseg.score":
            results.score_manifests.append((path, _check_fields(path, obj, {"dataset": str, "dataset_kind": str,
                                                                             "root": str})))
    if not (raw_evaluations or results.metas or results.trainings):
        raise OodsegError(f"{root}: no results files found (expected JSON written by "
                          f"`oodseg evaluate --json`, `oodseg meta --json` or `oodseg train`)")
    results.evaluations = _label_evaluations(results.root, raw_evaluations)
    return results


def _result_candidates(root: Path) -> list[Path]:
    """All ``*.json`` files below ``root``, skipping hidden files and folders, sorted."""
    found = []
    for path in root.rglob("*.json"):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found)


def read_json(path: Path) -> Any:
    """Parse a JSON file; OodsegError naming the file when it is unreadable or corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OodsegError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise OodsegError(f"{path}: not a UTF-8 text file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OodsegError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


def _read_log(path: Path) -> list[dict]:
    """Records of a training ``log.jsonl`` (empty when the file does not exist).

    Non-finite losses are kept (a diverged run is worth seeing); they plot as gaps.
    """
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OodsegError(f"{path}:{lineno}: corrupt JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise OodsegError(f"{path}:{lineno}: log record must be an object with an integer 'step'")
        records.append(record)
    return records


def _check_fields(path: Path, obj: dict, types: dict[str, type]) -> dict:
    """Require each key of ``types`` in ``obj`` with that type."""
    for key, kind in types.items():
        if not isinstance(obj.get(key), kind):
            raise OodsegError(f"{path}: field {key!r} must be a {kind.__name__}")
    return obj


def _metric(path: Path, obj: dict, key: str, where: str = "") -> float | None:
    """A metric value: a finite number, or None when absent/null."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OodsegError(f"{path}: field {where}{key!r} must be a number or null, got {type(value).__name__}")
    if not math.isfinite(value):
        raise OodsegError(f"{path}: field {where}{key!r} is {value} (use null for a metric that cannot be computed)")
    return float(value)


def _series(path: Path, obj: Any, where: str, keys: tuple[str, ...], extra: int = 0) -> dict:
    """Validate a dict of equal-length finite number lists (``keys[0]`` may be ``extra`` longer)."""
    if not isinstance(obj, dict):
        raise OodsegError(f"{path}: field {where!r} must be an object")
    lengths = []
    for key in keys:
        values = obj.get(key)
        if not isinstance(values, list) or not values:
            raise OodsegError(f"{path}: field '{where}.{key}' must be a non-empty list of numbers")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OodsegError(f"{path}: field '{where}.{key}' contains {value!r} (finite numbers only)")
        lengths.append(len(values))
    if lengths[0] - extra != lengths[1] or len(set(lengths[1:])) != 1:
        raise OodsegError(f"{path}: lists in {where!r} have inconsistent lengths {dict(zip(keys, lengths))}")
    return obj


def _check_evaluate(path: Path, obj: dict) -> dict:
    _check_fields(path, obj, {"dataset": str, "method": str})
    for key in EVALUATE_METRICS:
        _metric(path, obj, key)
    curves = obj.get("curves")
    if curves is not None:
        if not isinstance(curves, dict):
            raise OodsegError(f"{path}: field 'curves' must be an object")
        if "pr" in curves:
            _series(path, curves["pr"], "curves.pr", ("recall", "precision"))
        if "roc" in curves:
            _series(path, curves["roc"], "curves.roc", ("fpr", "tpr"))
        if "hist" in curves:
            _series(path, curves["hist"], "curves.hist", ("edges", "inlier", "anomaly"), extra=1)
    calibration = obj.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise OodsegError(f"{path}: field 'calibration' must be an object")
        for key in CALIBRATION_METRICS:
            _metric(path, calibration, key, where="calibration.")
        if "reliability" in calibration:
            _series(path, calibration["reliability"], "calibration.reliability", ("confidence", "accuracy", "count"))
        if "sparsification" in calibration:
            _series(path, calibration["sparsification"], "calibration.sparsification",
                    ("fraction", "model", "oracle"))
    return obj


def _check_meta(path: Path, obj: dict) -> dict:
    _check_fields(path, obj, {"dataset": str, "thresholds": list})
    for i, row in enumerate(obj["thresholds"]):
        if not isinstance(row, dict):
            raise OodsegError(f"{path}: thresholds[{i}] must be an object")
        if _metric(path, row, "t", where=f"thresholds[{i}].") is None:
            raise OodsegError(f"{path}: thresholds[{i}].t must be a number")
        for stage in ("before", "after"):
            if not isinstance(row.get(stage), dict):
                raise OodsegError(f"{path}: thresholds[{i}].{stage} must be an object")
            for key in ("FP", "FN", "F1", "miss_rate"):
                _metric(path, row[stage], key, where=f"thresholds[{i}].{stage}.")
    for section in ("classification", "regression"):
        if obj.get(section) is not None and not isinstance(obj[section], dict):
            raise OodsegError(f"{path}: field {section!r} must be an object or null")
    return obj


def _check_train(path: Path, obj: dict) -> dict:
    _check_fields(path, obj, {"recipe": str})
    for key in ("steps", "seconds", "val_mIoU"):
        _metric(path, obj, key)
    return obj


def _label_evaluations(root: Path, raw: list[tuple[Path, dict]]) -> list[Evaluation]:
    """Build Evaluation objects; a method evaluated twice on one dataset gets its folder in the label."""
    counts: dict[tuple[str, str], int] = {}
    for _, obj in raw:
        counts[(obj["dataset"], obj["method"])] = counts.get((obj["dataset"], obj["method"]), 0) + 1
    evaluations = []
    for path, obj in raw:
        label = obj["method"]
        if counts[(obj["dataset"], obj["method"])] > 1:
            label = f"{label} ({path.relative_to(root).as_posix()})"
        metrics = {key: _metric(path, obj, key) for key in EVALUATE_METRICS}
        calibration = obj.get("calibration") or {}
        metrics.update({key: _metric(path, calibration, key) for key in CALIBRATION_METRICS})
        evaluations.append(Evaluation(path=path, data=obj, metrics=metrics, label=label))
    return evaluations
