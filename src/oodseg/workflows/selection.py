"""Choices taken from a validation result and applied to a test set (never chosen on the test set).

* :func:`component_threshold_from` — the component-metric threshold θ of ``oodseg evaluate
  --threshold-from VAL.json``: the best-F1 pixel threshold that the same method reached on the
  validation track (an ``oodseg.evaluate`` result).
* :func:`meta_threshold_from` — the Meta-OoD segment threshold t of ``oodseg meta --threshold-from
  VAL.json`` and of the demo: the t of an ``oodseg.meta`` result on the validation track whose F1
  after removing the segments classified false positive (out-of-fold, cross-validation grouped by
  image) is highest; ties go to the smaller t.

Each returns the value and a provenance dict stored in the test result
(``component_threshold_from`` / ``segments_threshold_from``, docs/results-schema.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from oodseg.errors import OodsegError


def _read_result(path: str | Path, schema: str) -> dict:
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OodsegError(f"threshold_from {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise OodsegError(f"threshold_from {path}: unreadable JSON ({exc})") from None
    if not isinstance(result, dict) or result.get("schema") != schema:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise OodsegError(f"threshold_from {path}: expected an {schema} result, found {found!r}")
    return result


def component_threshold_from(path: str | Path, method: str) -> tuple[float, dict]:
    """θ = ``best_F1_threshold`` of ``method`` in the ``oodseg.evaluate`` result at ``path``.

    Refuses a result of another method (a threshold is meaningful only on the same score's scale).
    """
    result = _read_result(path, "oodseg.evaluate")
    if result.get("method") != method:
        raise OodsegError(f"threshold_from {path}: a result of method {result.get('method')!r}, not {method!r} "
                          "(θ is on the score's own scale; pass --method to name the method)")
    theta = result.get("best_F1_threshold")
    if not isinstance(theta, (int, float)) or not math.isfinite(theta):
        raise OodsegError(f"threshold_from {path}: no finite best_F1_threshold")
    return float(theta), {"file": str(Path(path).resolve()), "dataset": result.get("dataset"),
                          "method": method, "criterion": "best pixel F1 on the validation set"}


def best_meta_threshold(rows: list[dict]) -> dict:
    """The row of an ``oodseg.meta`` ``thresholds`` table with the highest F1 after removal (ties: smaller t)."""
    scored = [row for row in rows if row["after"]["F1"] is not None]
    if not scored:
        raise OodsegError("no threshold with a defined F1 after removal")
    return max(sorted(scored, key=lambda row: row["t"]), key=lambda row: row["after"]["F1"])


def meta_threshold_from(path: str | Path) -> tuple[float, dict]:
    """t of the ``oodseg.meta`` result at ``path`` with the best F1 after meta filtering (entropy segments)."""
    result = _read_result(path, "oodseg.meta")
    if not result.get("thresholds"):
        raise OodsegError(f"threshold_from {path}: no threshold table (a run with entropy:T segments is needed)")
    try:
        row = best_meta_threshold(result["thresholds"])
    except OodsegError as exc:
        raise OodsegError(f"threshold_from {path}: {exc}") from None
    return float(row["t"]), {"file": str(Path(path).resolve()), "dataset": result.get("dataset"),
                             "method": result.get("method"), "F1_after": row["after"]["F1"],
                             "criterion": "best F1 after meta filtering (CV grouped by image) on the validation set"}
