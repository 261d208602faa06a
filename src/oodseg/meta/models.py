"""Meta models (scikit-learn) and image-grouped cross-validation (SPEC §3).

- ``make_model(task, kind)``: ``kind="logistic"`` gives logistic regression (classification) or
  linear regression (regression), ``kind="gbm"`` gradient boosting. Every model is a
  ``Pipeline(StandardScaler, model)``, so features are z-scored with the statistics of the
  data it is fitted on — in cross-validation the training fold only (the authors' code
  scaled with all data, a leak).
- ``cv_splits(groups, cv)``: ``"image-kfold:K"`` (GroupKFold, K folds over images) or ``"loo"``
  (leave one image out, LeaveOneGroupOut); no image is ever in a training and a test fold.
- ``cross_val_predict(...)``: out-of-fold predictions for every segment.
- ``convergence_reported(what)``: scikit-learn convergence warnings of a block as one OodsegWarning.
- Classification target: 1 = false-positive segment (IoU = 0), 0 = true positive (IoU > 0),
  as in the Meta-OoD code, so AUPRC is the precision of finding false positives.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from oodseg.errors import OodsegError, OodsegWarning

MODEL_KINDS = ("logistic", "gbm")
TASKS = ("classification", "regression")


def make_model(task: str, kind: str = "logistic", seed: int = 0) -> Pipeline:
    """An unfitted ``Pipeline(StandardScaler, model)`` for ``task`` ("classification"|"regression")."""
    if task not in TASKS:
        raise OodsegError(f"task: {task!r} is not one of {', '.join(TASKS)}")
    if kind not in MODEL_KINDS:
        raise OodsegError(f"model: {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    if kind == "logistic":
        model = LogisticRegression(max_iter=2000) if task == "classification" else LinearRegression()
    else:
        model = (GradientBoostingClassifier if task == "classification" else GradientBoostingRegressor)(random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def parse_cv(cv: str) -> tuple[str, int | None]:
    """``"image-kfold:5"`` → ``("image-kfold", 5)``; ``"loo"`` → ``("loo", None)``."""
    kind, _, value = cv.partition(":")
    if kind == "loo" and not value:
        return "loo", None
    if kind == "image-kfold":
        try:
            folds = int(value or 5)
        except ValueError:
            folds = 0
        if folds >= 2:
            return kind, folds
    raise OodsegError(f"cv: {cv!r} is not image-kfold:K (K >= 2) or loo")


def fold_count(cv: str, n_images: int) -> int:
    """Folds ``cv`` makes over ``n_images`` images: K, or one per image for ``loo`` and when K > ``n_images``."""
    kind, folds = parse_cv(cv)
    return n_images if kind == "loo" else min(folds, n_images)


def cv_splits(groups: np.ndarray, cv: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, test indices) per fold (:func:`fold_count` of them); ``groups`` (n,) image index of
    each segment."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise OodsegError(f"cv {cv}: cross-validation needs segments from at least 2 images, got {n_groups}")
    kind, _ = parse_cv(cv)
    splitter = LeaveOneGroupOut() if kind == "loo" else GroupKFold(n_splits=fold_count(cv, n_groups))
    index = np.zeros(len(groups))
    return [(train, test) for train, test in splitter.split(index, groups=groups)]


def cross_val_predict(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cv: str, task: str,
                      kind: str = "logistic") -> np.ndarray:
    """Out-of-fold predictions (n,): P(y = 1) for classification, the value for regression.

    A training fold with one class only predicts that class (probability 0 or 1). scikit-learn's
    convergence warnings pass through (:func:`convergence_reported` gathers them).
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    predictions = np.zeros(len(y), dtype=np.float64)
    for train, test in cv_splits(groups, cv):
        if task == "classification" and len(np.unique(y[train])) < 2:
            predictions[test] = float(y[train][0])
            continue
        model = make_model(task, kind)
        model.fit(X[train], y[train])
        predictions[test] = model.predict_proba(X[test])[:, 1] if task == "classification" else model.predict(X[test])
    return predictions


def classification_scores(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """``{"AUROC", "AUPRC"}`` of ``score`` for binary ``y`` (NaN when only one class is present)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return {"AUROC": float("nan"), "AUPRC": float("nan")}
    return {"AUROC": float(roc_auc_score(y, score)), "AUPRC": float(average_precision_score(y, score))}


def regression_score(y: np.ndarray, prediction: np.ndarray) -> float:
    """Coefficient of determination R² (NaN for fewer than 2 segments)."""
    return float(r2_score(y, prediction)) if len(y) >= 2 else float("nan")


@contextlib.contextmanager
def convergence_reported(what: str) -> Iterator[None]:
    """Gather the scikit-learn convergence warnings of the block (model fits, LARS) and issue them as one
    OodsegWarning ``"<what>: scikit-learn did not converge N time(s) (first: ...)"`` at its end; other
    warnings are re-issued unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    converge = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if converge:
        first = str(converge[0].message).splitlines()[0]
        warnings.warn(OodsegWarning(f"{what}: scikit-learn did not converge {len(converge)} time(s); results may be "
                                    f"less reliable (first: {first[:160]})"), stacklevel=3)
