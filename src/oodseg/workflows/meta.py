"""Meta classification and regression over a dataset (SPEC §3) — what ``oodseg meta`` runs.

Pass 1, per frame: segments (Meta-OoD: components of ``score >= t`` off void for every
threshold t; MetaSeg: components of each predicted class), their features
(:mod:`oodseg.meta.features`) and targets (:mod:`oodseg.meta.targets`), and the MSP
baseline: the segment's mean max-softmax probability (MSP) alone, which flags a false
positive when it is high for an OoD segment (a confident prediction is no anomaly) and when
it is low for a class segment (MetaSeg's "maximum softmax" baseline).

Then per segmentation: out-of-fold meta-classifier probabilities ``P(false positive)`` by
image-grouped cross-validation (:mod:`oodseg.meta.models`), AUROC/AUPRC of finding false
positives against the MSP baseline (Meta-OoD Table 3), R² of the IoU
regression (predictions clipped to [0, 1], the range of IoU; the target is mostly 0 for
Meta-OoD segments and an unclipped linear fit overshoots) and the LARS ranking (at the main
segmentation only).

Pass 2 (Meta-OoD): segments with ``P(false positive) > 0.5`` are removed; FP, FN, F1 and the
road miss rate before/after per threshold come from :class:`oodseg.metrics.DetectionMetrics`
(Meta-OoD Table 2), and optionally the filtered score maps are written (rejected segments
set to the frame's minimum score, and below t) as ``{out}/{method}_meta/{dataset}/{fid}.hdf5``.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from oodseg.atomic import atomic_directory
from oodseg.conventions import VOID
from oodseg.data import find_score, read_score, write_score
from oodseg import layout
from oodseg.errors import OodsegError, OodsegWarning
from oodseg.meta.analysis import lars_ranking
from oodseg.meta.features import dispersion_maps, segment_features, segment_means
from oodseg.meta.models import (classification_scores, convergence_reported, cross_val_predict, fold_count, parse_cv,
                                regression_score)
from oodseg.workflows.probabilities import open_probabilities, probabilities_name
from oodseg.meta.segments import class_segments, threshold_segments
from oodseg.meta.targets import segment_iou
from oodseg.metrics.detection import META_OOD_THRESHOLDS, DetectionMetrics
from oodseg.progress import track

SCHEMA = "oodseg.meta"
VERSION = 1
FEATURE_SETS = ("metaseg", "gradient", "score")
#: A segment is removed when its out-of-fold P(false positive) exceeds this.
REMOVAL_PROBABILITY = 0.5


@dataclass(frozen=True)
class SegmentSpec:
    """``kind`` "entropy" (threshold segments of the score map at ``threshold``) or "class"."""

    kind: str
    threshold: float | None = None


def parse_segments(text: str) -> SegmentSpec:
    """``"entropy:0.3"`` or ``"class"``."""
    kind, sep, value = text.partition(":")
    if kind == "class" and not sep:
        return SegmentSpec("class")
    if kind == "entropy" and sep:
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if math.isfinite(threshold):
            return SegmentSpec("entropy", threshold)
    raise OodsegError(f"segments: {text!r} is not entropy:T (e.g. entropy:0.3) or class")


def parse_features(items: str | Sequence[str]) -> tuple[str, ...]:
    """``"metaseg,gradient"`` → ``("metaseg", "gradient")``; known sets: metaseg, gradient, score."""
    names = [s.strip() for s in (items.split(",") if isinstance(items, str) else items) if s.strip()]
    unknown = [s for s in names if s not in FEATURE_SETS]
    if unknown or not names:
        raise OodsegError(f"features: {','.join(unknown) or 'nothing'} given; choose from {', '.join(FEATURE_SETS)}")
    return tuple(dict.fromkeys(names))


@dataclass
class _Collected:
    """Segments of one segmentation setting over the dataset (rows in frame order)."""

    features: list[np.ndarray] = field(default_factory=list)
    iou: list[np.ndarray] = field(default_factory=list)
    baseline: list[np.ndarray] = field(default_factory=list)
    frame: list[np.ndarray] = field(default_factory=list)
    names: list[str] | None = None

    def add(self, frame_index: int, features, iou: np.ndarray, baseline: np.ndarray) -> None:
        self.features.append(features.values)
        self.names = features.names
        self.iou.append(iou)
        self.baseline.append(baseline)
        self.frame.append(np.full(len(iou), frame_index))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        width = len(self.names or [])
        X = np.concatenate(self.features) if self.features else np.zeros((0, width))
        return X, np.concatenate(self.iou or [np.zeros(0)]), np.concatenate(self.baseline or [np.zeros(0)]), \
            np.concatenate(self.frame or [np.zeros(0, dtype=int)])


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _meta_classify(collected: _Collected, cv: str, model: str) -> tuple[np.ndarray, dict]:
    """Out-of-fold removal decisions (n,) bool and ``{AUROC, AUPRC, baseline_AUROC, baseline_AUPRC, ...}``.

    Needs segments with targets in at least 2 frames; otherwise nothing is removed and scores are None.
    """
    X, iou, baseline, frame = collected.arrays()
    valid = np.isfinite(iou)
    false_positive = iou[valid] == 0
    remove = np.zeros(len(iou), dtype=bool)
    n_images = len(np.unique(frame[valid]))
    result = {"AUROC": None, "AUPRC": None, "baseline_AUROC": None, "baseline_AUPRC": None,
              "n_segments": int(valid.sum()), "n_false_positive": int(false_positive.sum()),
              "cv_folds": fold_count(cv, n_images) if n_images >= 2 else None}
    if n_images < 2:
        return remove, result
    p_fp = cross_val_predict(X[valid], false_positive, frame[valid], cv, "classification", model)
    remove[valid] = p_fp > REMOVAL_PROBABILITY
    meta = classification_scores(false_positive, p_fp)
    base = classification_scores(false_positive, baseline[valid])
    result.update({"AUROC": _finite_or_none(meta["AUROC"]), "AUPRC": _finite_or_none(meta["AUPRC"]),
                   "baseline_AUROC": _finite_or_none(base["AUROC"]), "baseline_AUPRC": _finite_or_none(base["AUPRC"])})
    return remove, result


def _meta_regress(collected: _Collected, cv: str, model: str) -> dict | None:
    X, iou, _, frame = collected.arrays()
    valid = np.isfinite(iou)
    if len(np.unique(frame[valid])) < 2:
        return None
    prediction = np.clip(cross_val_predict(X[valid], iou[valid], frame[valid], cv, "regression", model), 0.0, 1.0)
    return {"R2": _finite_or_none(regression_score(iou[valid], prediction))}


def _check_label(sample, spec: SegmentSpec, num_classes: int) -> np.ndarray:
    label = sample.label
    if label is None:
        raise OodsegError(f"{sample.image_path}: frame {sample.fid} has no label; meta models need labels")
    if spec.kind == "class":
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[:VOID])
        if present.size and present[-1] >= num_classes:
            raise OodsegError(f"label of frame {sample.fid}: class id {int(present[-1])} but --probs gives "
                              f"{num_classes} classes (a checkpoint/probabilities of another class count?)")
    return label


class _FrameReader:
    """Reads one frame's label, score map and probabilities and checks that their sizes agree."""

    def __init__(self, scores_dir, probs_source):
        self.scores_dir, self.probs_source = scores_dir, probs_source

    def score(self, sample) -> np.ndarray | None:
        if self.scores_dir is None:
            return None
        path = find_score(self.scores_dir, sample.fid)
        score = read_score(path)
        if sample.label is not None and score.shape != sample.label.shape:
            raise OodsegError(f"{path}: score map {score.shape} and label {sample.label.shape} differ in size")
        return score

    def probabilities(self, sample, score: np.ndarray | None) -> tuple[np.ndarray, dict]:
        probs, gradient_maps = self.probs_source(sample)
        expected = score.shape if score is not None else sample.label.shape
        if probs.shape[1:] != expected:
            raise OodsegError(f"probs, frame {sample.fid}: probability maps {probs.shape[1:]} and score/label maps "
                              f"{expected} differ in size")
        return probs, gradient_maps


def run_meta(dataset, *, probs: str | Path, scores_dir: str | Path | None = None, segments: str = "entropy:0.3",
             features: str | Sequence[str] = ("metaseg",), model: str = "logistic", cv: str = "image-kfold:5",
             thresholds: Sequence[float] = META_OOD_THRESHOLDS, filtered_out: str | Path | None = None,
             method: str | None = None, overwrite: bool = False, device: str = "cpu") -> dict:
    """Run meta classification/regression on a labelled ``dataset`` (:func:`oodseg.data.open_dataset`).

    Args:
        probs: checkpoint directory or folder of ``{fid}.npz`` probabilities (:mod:`oodseg.workflows.probabilities`).
        scores_dir: folder of score files ``{fid}.hdf5`` (e.g. ``OUT/entropy/DATASET``); required for
            ``entropy:T`` segments (the map that is thresholded), optional for ``class``.
        segments: ``"entropy:T"`` (Meta-OoD, OoD labels 0/1/255) or ``"class"`` (MetaSeg, trainId labels).
        features: feature sets: ``metaseg`` (E, D, V statistics, cprob, ndist — the 75 Meta-OoD
            features for 19 classes), ``gradient`` (PGN maps, needs a checkpoint), ``score`` (the score map).
        model: ``logistic`` (logistic / linear regression) or ``gbm`` (gradient boosting).
        cv: ``image-kfold:K`` or ``loo`` (leave one image out).
        thresholds: Meta-OoD table thresholds (entropy segments; the main T is added if missing).
        filtered_out: write filtered score maps to ``{filtered_out}/{method}_meta/{dataset}/`` (entropy segments).
        method: name of the scored method (default: the parent folder name of ``scores_dir``).
    Returns:
        The ``oodseg.meta`` result dict (docs/results-schema.md).
    """
    spec = parse_segments(segments)
    feature_sets = parse_features(features)
    kind, folds = parse_cv(cv)
    expected_labels = "ood" if spec.kind == "entropy" else "semantic"
    if dataset.label_type != expected_labels:
        need = "OoD labels 0/1/255 (e.g. smiyc-anomaly)" if spec.kind == "entropy" else "semantic trainId labels (cityscapes)"
        raise OodsegError(f"segments {segments}: needs a dataset with {need}; {dataset.name} has "
                          f"{dataset.label_type or 'no'} labels")
    if spec.kind == "entropy":
        if scores_dir is None:
            raise OodsegError(f"segments {segments}: needs scores_dir (the score maps that are thresholded)")
        table = sorted({float(t) for t in thresholds} | {spec.threshold})
    else:
        if filtered_out is not None:
            raise OodsegError("filtered_out: only for entropy:T segments (class segments do not filter a score map)")
        table = []
    if "score" in feature_sets and scores_dir is None:
        raise OodsegError("features score: needs scores_dir (the score maps)")
    if scores_dir is not None and not Path(scores_dir).is_dir():
        raise OodsegError(f"scores_dir {scores_dir}: not a folder")
    method = method or (Path(scores_dir).resolve().parent.name if scores_dir is not None else "class")
    target = None
    if filtered_out is not None:
        target = layout.scores_dir(filtered_out, f"{method}_meta", dataset.name)
        if target.exists() and not overwrite:
            raise OodsegError(f"{target}: exists; pass --overwrite to replace the filtered maps")

    probs_source = open_probabilities(probs, gradient="gradient" in feature_sets, device=device)
    reader = _FrameReader(scores_dir, probs_source)
    settings = table if spec.kind == "entropy" else ["class"]
    collected = {key: _Collected() for key in settings}
    try:
        for index in track(range(len(dataset)), f"meta features {dataset.name}", total=len(dataset)):
            _collect_frame(index, dataset[index], reader, spec, feature_sets, settings, collected)
    finally:
        probs_source.close()

    main_key = spec.threshold if spec.kind == "entropy" else "class"
    decisions, per_setting = {}, {}
    main = collected[main_key]
    X, iou, _, _ = main.arrays()
    valid = np.isfinite(iou)
    with convergence_reported(f"meta {model}"):
        for key in settings:
            decisions[key], per_setting[key] = _meta_classify(collected[key], cv, model)
        lars = lars_ranking(X[valid], (iou[valid] == 0).astype(float), main.names) if valid.sum() >= 2 else []
        regression = _meta_regress(main, cv, model)
    classification = {k: v for k, v in per_setting[main_key].items() if k not in ("n_segments", "cv_folds")}
    cv_folds = per_setting[main_key]["cv_folds"]
    if kind == "image-kfold" and cv_folds is not None and cv_folds < folds:
        warnings.warn(OodsegWarning(f"cv {cv}: only {cv_folds} of {len(dataset)} images have segments at "
                                    f"{segments}; cross-validated with {cv_folds} folds (cv_folds in the results)"))
    result = {"schema": SCHEMA, "version": VERSION, "dataset": dataset.name, "dataset_kind": dataset.kind,
              "root": str(dataset.root), "scores": str(Path(scores_dir).resolve()) if scores_dir else None,
              "probs": probabilities_name(probs), "method": method, "segments": segments,
              "features": list(feature_sets), "model": model, "cv": cv, "cv_folds": cv_folds,
              "n_frames": len(dataset),
              "n_segments": per_setting[main_key]["n_segments"], "n_features": len(main.names or []), "feature_names": main.names,
              "classification": classification, "regression": regression,
              "thresholds": [], "lars": [[name, rank] for name, rank in lars], "filtered": None}
    if spec.kind == "entropy":
        rows = _detection_table(dataset, reader, table, collected, decisions, spec.threshold, target, main_key)
        for t, row in zip(table, rows):
            row["classification"] = per_setting[t]
        result["thresholds"] = rows
        result["filtered"] = str(target.resolve()) if target is not None else None
    return result


def _collect_frame(index, sample, reader: _FrameReader, spec, feature_sets, settings, collected) -> None:
    """Features, targets and the MSP baseline of one frame's segments, for every setting."""
    score = reader.score(sample)
    probs, gradient_maps = reader.probabilities(sample, score)
    label = _check_label(sample, spec, probs.shape[0])
    maps = {}
    if "metaseg" in feature_sets:
        maps.update(dispersion_maps(probs))
    if "gradient" in feature_sets:
        maps.update(gradient_maps)
    if "score" in feature_sets:
        maps["score"] = score
    class_probs = probs if "metaseg" in feature_sets else None
    prediction = probs.argmax(axis=0)
    max_prob = probs.max(axis=0)
    for key in settings:
        if spec.kind == "entropy":
            ids, n = threshold_segments(score, key, valid=label != VOID)
            segment_class = np.ones(n, dtype=np.int64)
        else:
            ids, n, segment_class = class_segments(prediction)
        feats = segment_features(ids, n, maps, class_probs, prediction)
        mean_msp = segment_means(ids, n, max_prob)
        # baseline score for "false positive": a confident OoD segment, an unconfident class segment
        baseline = mean_msp if spec.kind == "entropy" else 1.0 - mean_msp
        collected[key].add(index, feats, segment_iou(ids, n, segment_class, label), baseline)


def _detection_table(dataset, reader: _FrameReader, table, collected, decisions, main_t, target, main_key) -> list[dict]:
    """Meta-OoD Table 2 rows (before/after removal) and, with ``target``, the filtered score maps."""
    before, after = DetectionMetrics(table), DetectionMetrics(table)
    # row offset of each frame's first segment, per threshold
    offsets = {t: np.concatenate([[0], np.cumsum([len(b) for b in collected[t].iou])]) for t in table}
    with atomic_directory(target) if target is not None else contextlib.nullcontext() as folder:
        for index in track(range(len(dataset)), f"meta filtering {dataset.name}", total=len(dataset)):
            sample = dataset[index]
            score = reader.score(sample)
            valid = sample.label != VOID
            removed_masks = []
            for t in table:
                ids, n = threshold_segments(score, t, valid=valid)
                start, stop = offsets[t][index], offsets[t][index + 1]
                if stop - start != n:
                    raise OodsegError(f"{find_score(reader.scores_dir, sample.fid)}: changed while meta ran "
                                      f"({n} segments at t={t}, {stop - start} before)")
                removed_masks.append(np.concatenate([[False], decisions[t][start:stop]])[ids])
            before.update(score, sample.label)
            after.update(score, sample.label, removed_masks=removed_masks)
            if folder is not None:
                write_score(folder / f"{sample.fid}.hdf5", suppress_segments(score, removed_masks[table.index(main_key)], main_t))
    rows = []
    for b, a in zip(before.compute()["per_threshold"], after.compute()["per_threshold"]):
        rows.append({"t": b["t"], "before": _detection_row(b), "after": _detection_row(a)})
    return rows


def _detection_row(row: dict) -> dict:
    return {"TP": row["TP"], "FP": row["FP"], "FN": row["FN"], "F1": _finite_or_none(row["F1"]),
            "miss_rate": _finite_or_none(row["miss_rate"])}


def suppress_segments(score: np.ndarray, removed: np.ndarray, threshold: float) -> np.ndarray:
    """Copy of ``score`` (H, W) with the ``removed`` pixels set to ``min(frame minimum, t⁻)``.

    ``t⁻`` is the largest float16 value below ``threshold``, so suppressed pixels stay below
    the threshold after SMIYC float16 storage and rank lowest among the frame's pixels.
    """
    floor = float(np.nextafter(np.float16(threshold), np.float16(-np.inf)))
    out = np.array(score, dtype=np.float32, copy=True)
    if removed.any():
        out[removed] = min(float(score.min()), floor)
    return out
