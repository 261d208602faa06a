"""Segmentation quality and calibration of a model on a dataset (SPEC §4.3, §4.4).

Inputs per frame:

* the model's softmax probabilities ``p`` (C, H, W): the checkpoint re-run through the
  :class:`~oodseg.adapter.ModelAdapter` (logits upsampled bilinearly to the image size, then
  softmax — the argmax is ``oodseg score``'s prediction PNG), or saved ``{fid}.npz`` maps
  (:mod:`oodseg.workflows.probabilities`); by default the checkpoint recorded in the manifest of
  the method's maps ``{out}/_manifest/{dataset}/{method}.json`` (:mod:`oodseg.provenance`), checked
  against the weights' sha256 recorded there;
* the method's anomaly score ``u`` (H, W) from its score files ``{out}/{method}/{dataset}/{fid}.*``;
* the semantic label (H, W): trainIds ``0..C-1``, ``254`` GT outlier, ``255`` void.

Results (:func:`evaluate_semantic`):

* ``segmentation`` (:class:`~oodseg.metrics.segmentation.SegmentationMetrics`): mIoU of
  ``argmax p`` (outlier pixels ignored), mIoU when pixels with ``u >= t`` are predicted OoD,
  open-mIoU at the threshold where the TPR on outlier pixels reaches 95% (null without outliers);
* ``calibration`` (:class:`~oodseg.metrics.calibration.CalibrationMetrics`) of ``u`` as the
  uncertainty on the in-distribution pixels (outliers become void): ECE (confidence from ``u``,
  see ``confidence``) and AuSE of the pixel Brier score of ``p``.

Under ``torchrun`` each rank takes every ``world_size``-th frame, the metric states are
all-reduced and every rank returns the same result (rank 0 should write it).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from oodseg import distributed
from oodseg.data.readers import Dataset, Sample, kind_options, open_dataset
from oodseg.errors import OodsegError, check_choice
from oodseg.provenance import manifest_of
from oodseg.conventions import OUTLIER, VOID
from oodseg.workflows.evaluate import SCHEMA, VERSION, FrameReader, load_roi
from oodseg.metrics.calibration import CONFIDENCE_MAPS, CalibrationMetrics
from oodseg.metrics.segmentation import SegmentationMetrics
from oodseg.metrics.tally import MODES
from oodseg.progress import track as progress

#: ``auto`` picks ``normalised`` (1 − u / max u, SPEC §4.3) for non-negative scores, else ``minmax``.
CONFIDENCE_CHOICES = ("auto",) + CONFIDENCE_MAPS
#: Pixel-level OoD metrics of ``oodseg.evaluate``; null in a result without OoD labels.
OOD_METRICS = ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold", "sIoU", "PPV", "mean_F1")
#: Keys a semantic result adds to an OoD result of the same frames (:func:`with_semantic`).
SEMANTIC_KEYS = ("probs", "segmentation", "calibration")


def open_semantic_dataset(kind: str, root: str | Path, **options) -> Dataset:
    """Open the semantic-label view of a layout: ``target="semantic"`` for the kinds that
    have it (SMIYC tracks, StreetHazards), the layout as-is otherwise (Cityscapes, folder)."""
    if "target" in kind_options(kind):
        if options.get("target", "semantic") != "semantic":
            raise OodsegError(f"target={options['target']}: segmentation metrics need target=semantic labels")
        options = {**options, "target": "semantic"}
    dataset = open_dataset(kind, root, **options)
    if dataset.label_type != "semantic":
        what = "OoD labels 0/1/255" if dataset.label_type == "ood" else "no labels"
        raise OodsegError(f"{dataset.root}: dataset kind {kind} has {what}; segmentation metrics need "
                          "semantic labels (trainIds, 254 outlier, 255 void)")
    return dataset


def label_classes(dataset: Dataset) -> int:
    """Number of trainIds the dataset's label encoding can produce (largest id + 1, 254/255 excluded)."""
    encoding = next(f.encoding for f in dataset.frames if f.label_path is not None)
    ids = set(int(v) for v in encoding.table[encoding.table >= 0]) - {OUTLIER, VOID}
    return max(ids) + 1


def _probability_source(probs: str | Path | None, manifest: dict | None, scores_dir: Path, device: str):
    """The probability source (checkpoint or ``.npz`` folder) and its path; checks the class names of the run."""
    from oodseg.workflows.probabilities import open_probabilities
    from oodseg.models import read_checkpoint_meta

    if probs is None:
        if manifest is None or not manifest.get("checkpoint"):
            raise OodsegError(f"{scores_dir}: no probabilities: pass --probs CKPT_OR_DIR (no score manifest with a "
                              "checkpoint next to these scores)")
        probs = manifest["checkpoint"]
        if not Path(probs).is_dir():
            raise OodsegError(f"{manifest['path']}: checkpoint {probs} does not exist; pass --probs CKPT_OR_DIR")
        recorded = manifest.get("checkpoint_sha256")
        if recorded and read_checkpoint_meta(probs)["weights_sha256"] != recorded:
            raise OodsegError(f"{manifest['path']}: checkpoint {probs} now holds other weights than the ones that "
                              f"wrote these scores (sha256 {recorded[:12]}…); pass --probs CKPT_OR_DIR")
    path = Path(probs).expanduser().resolve()
    if not path.exists():
        raise OodsegError(f"probs {path}: not found (expected a checkpoint or a folder of {{fid}}.npz)")
    classes = None
    if (path / "model.json").is_file():
        classes = read_checkpoint_meta(path)["classes"]
        scored = (manifest or {}).get("classes")
        if scored is not None and scored != classes:
            raise OodsegError(f"probs {path}: its {len(classes)} classes differ from the {len(scored)} classes of "
                              f"the checkpoint that wrote the scores ({manifest['path']})")
    return open_probabilities(path, device=device), path, classes


def json_ready(value):
    """``value`` with NaN/Inf floats (also inside lists and dicts) replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def evaluate_semantic(dataset: Dataset, scores_dir: str | Path, probs: str | Path | None = None, *,
                      method: str | None = None, mode: str = "exact", ood_thresholds=(), confidence: str = "auto",
                      resize: bool = False, roi=None, device: str = "cpu") -> dict:
    """Segmentation (mIoU, mIoU at t, open-mIoU) and calibration (ECE, AuSE) of one method on ``dataset``.

    ``dataset``: semantic labels (see :func:`open_semantic_dataset`). ``scores_dir``: the method's
    score files. ``probs``: checkpoint directory or folder of ``{fid}.npz`` probabilities (default:
    the checkpoint in the score run's manifest). ``mode``: ``exact`` or ``streaming`` metric states.
    ``ood_thresholds``: thresholds t of ``mIoU_at``. ``confidence``: score → confidence map of the
    ECE (``auto``, ``normalised``, ``complement``, ``minmax``). ``resize``: bilinearly resize scores
    to the label size (else a size mismatch is an error). ``roi``: bool (H, W) mask or image file;
    pixels outside become void. ``device``: where the checkpoint runs.

    Returns an ``oodseg.evaluate`` result object (docs/results-schema.md) with the OoD metrics null
    and the ``segmentation`` and ``calibration`` blocks.
    """
    if dataset.label_type != "semantic":
        raise OodsegError(f"{dataset.root}: dataset kind {dataset.kind} has no semantic labels; "
                          "open it with open_semantic_dataset")
    check_choice("mode", mode, MODES)
    check_choice("confidence", confidence, CONFIDENCE_CHOICES)
    thresholds = [float(t) for t in ood_thresholds]
    if not all(math.isfinite(t) for t in thresholds):
        raise OodsegError(f"ood thresholds: must be finite, got {thresholds}")
    scores_dir = Path(scores_dir).expanduser().resolve()
    if not scores_dir.is_dir():
        raise OodsegError(f"{scores_dir}: scores folder not found")
    num_classes = label_classes(dataset)
    manifest = manifest_of(scores_dir)
    read = FrameReader(dataset, scores_dir, resize, load_roi(roi))
    segmentation = SegmentationMetrics(num_classes=num_classes, ood_label=OUTLIER, ood_thresholds=thresholds,
                                       mode=mode)
    calibration = CalibrationMetrics(mode=mode, confidence="normalised" if confidence == "auto" else confidence)
    mine = distributed.shard(range(len(dataset)))
    source, source_path, classes = _probability_source(probs, manifest, scores_dir, device)
    try:
        if source.num_classes is not None and source.num_classes != num_classes:
            raise OodsegError(f"probs {source_path}: checkpoint has {source.num_classes} classes but the labels of "
                              f"{dataset.name} ({dataset.kind}) are trainIds 0..{num_classes - 1}")
        for i in progress(mine, f"{dataset.name}: segmentation + calibration"):
            score, label = read(i)
            frame = dataset.frame(i)
            p, _ = source(Sample(frame.fid, dataset.read_image(i), label, frame.image_path))
            if p.shape[0] != num_classes:
                raise OodsegError(f"probs {source_path}: frame {frame.fid} has {p.shape[0]} classes, "
                                  f"the labels {num_classes}")
            if p.shape[1:] != label.shape:
                raise OodsegError(f"probs {source_path}: frame {frame.fid} probabilities of size {p.shape[1:]} "
                                  f"differ from label size {label.shape} of {frame.label_path}")
            if not np.isfinite(p).all():
                raise OodsegError(f"probs {source_path}: frame {frame.fid}: probabilities contain NaN or Inf")
            segmentation.update(p.argmax(axis=0), label, score)
            calibration.update(score, p[None], np.where(label == OUTLIER, VOID, label))
    finally:
        source.close()
    segmentation.all_reduce()
    calibration.all_reduce()
    n_frames = int(distributed.all_reduce_sum(torch.tensor([len(mine)], dtype=torch.int64)).item())
    if confidence == "auto":
        calibration.confidence = "normalised" if calibration.u_min >= 0 else "minmax"
    seg = segmentation.compute()
    cal = calibration.compute()
    result = {
        "schema": SCHEMA, "version": VERSION,
        "dataset": dataset.name, "dataset_kind": dataset.kind,
        "method": method or scores_dir.parent.name, "mode": mode,
        "root": str(dataset.root), "scores": str(scores_dir), "probs": str(source_path),
        **{key: None for key in OOD_METRICS},
        "n_frames": n_frames, "n_pixels": seg["n_pixels"],
        "segmentation": {"mIoU": seg["mIoU"], "IoU_per_class": seg["IoU_per_class"],
                         **({"classes": list(classes)} if classes is not None else {}),
                         "mIoU_at": seg["mIoU_at"], "open_mIoU": seg["open_mIoU"],
                         "open_threshold": seg["open_threshold"], "open_IoU_per_class": seg["open_IoU_per_class"],
                         "n_pixels": seg["n_pixels"]},
        "calibration": {"ECE": cal["ECE"], "AuSE": cal["AuSE"], "confidence": calibration.confidence,
                        "reliability": cal["reliability"], "sparsification": cal["sparsification"],
                        "n_pixels": cal["n_pixels"]},
    }
    return json_ready(result)


def with_semantic(ood_result: dict, semantic_result: dict) -> dict:
    """An OoD result (:func:`oodseg.workflows.evaluate.evaluate_dataset`) with the semantic blocks of the same frames added."""
    return {**ood_result, **{key: semantic_result[key] for key in SEMANTIC_KEYS}}
