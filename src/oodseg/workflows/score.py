"""Score a dataset into files: ``{out}/{method}/{dataset}/{fid}.hdf5`` for every requested method.

Per batch of frames the model runs once through the :class:`~oodseg.adapter.ModelAdapter` (a
mask-classification model through :class:`~oodseg.mask_adapter.MaskAdapter`);
all output-based scores are computed together (:func:`oodseg.scores.compute` shares the
work), model-based ones (MC dropout, ODIN, ensembles) run the model themselves. Every map is
upsampled bilinearly (``align_corners=False``) to the image size and written as SMIYC hdf5
(float32 by default, so the files evaluate exactly like the maps; uncompressed unless ``compression``
says gzip or lzf); the argmax prediction
goes to ``{out}/_prediction/{checkpoint}/{dataset}/{fid}.png`` (one folder per checkpoint) and each
method's provenance to ``{out}/_manifest/{dataset}/{method}.json`` (:mod:`oodseg.provenance`). With
``dtype="float16"`` (compact
benchmark submissions) every written map is audited (:class:`~oodseg.metrics.quantization.Float16Audit`)
and a method whose ranking float16 alters gets an :class:`~oodseg.errors.OodsegWarning`.

A run is resumable: a file exists under its final name only when complete (atomic writes),
so a rerun with the same checkpoint, data and methods scores only what is missing. Methods are
independent: a new method is added to ``out`` without touching the others, and a method's
finished or different maps are replaced only with ``overwrite=True`` (which replaces only the
methods asked for). One ``score`` at a time writes into ``out`` (a lock file; a second is
refused). Under ``torchrun`` every rank scores its share of the frames (rank-strided).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from oodseg import distributed
from oodseg.adapter import ImageResolutionAdapter, ModelAdapter
from oodseg.conventions import image_to_tensor
from oodseg.atomic import write_json
from oodseg.data import detect_kind, open_dataset, write_score
from oodseg.data.io import COMPRESSIONS, STORAGE_DTYPES
from oodseg.data.transforms import label_to_tensor
from oodseg.keyvalue import parse_pairs
from oodseg.layout import (check_name, lock_path, manifest_path, manifests_dir, prediction_path, predictions_dir,
                           score_path, scores_dir)
from oodseg.atomic import exclusive
from oodseg import provenance
from oodseg.mask_adapter import MaskAdapter, is_mask_classification
from oodseg.errors import OodsegError, OodsegWarning, check_choice, one_line
from oodseg.metrics.quantization import Float16Audit
from oodseg.models.sources import ModelSource, declared_head, load_model_source, parse_model_source
from oodseg.progress import track
from oodseg.scores.postprocess import check_smooth
from oodseg.workflows.pipeline import (autocast_dtype, decoded_frames, finish_maps, predict, prepare_model,
                                      to_model_input, write_map, write_prediction)
from oodseg.workflows.presets import RESOLUTIONS
from oodseg.workflows.workers import WriterPool, resolve_workers, write_png

T = TypeVar("T")


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"pgn[label=uniform,p=0.1]"`` → ``("pgn", {"label": "uniform", "p": 0.1})``; a bare name has no parameters.

    The bracket form is the score's key (:attr:`oodseg.scores.Scorer.key`), so the same method can be
    requested with several parameter sets in one run. Values are read as JSON, else kept as strings.
    """
    name, bracket, rest = text.partition("[")
    if not bracket:
        return text, {}
    if not name or not rest.endswith("]"):
        raise OodsegError(f"methods {text!r}: expected NAME or NAME[KEY=VALUE,...]")
    return name, parse_pairs([item for item in rest[:-1].split(",") if item.strip()], f"methods {text!r}")


def _holding_output_lock(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function(checkpoint, images, methods, out, ...)`` holding the lock of ``out`` (main process only)."""
    @functools.wraps(function)
    def locked(checkpoint, images, methods, out, *args, **kwargs):
        if int(os.environ.get("RANK", "0")) != 0:
            return function(checkpoint, images, methods, out, *args, **kwargs)
        with exclusive(lock_path(out), "oodseg score"):
            return function(checkpoint, images, methods, out, *args, **kwargs)
    return locked


@_holding_output_lock
def score_dataset(checkpoint: str | Path | ModelSource, images: str | Path, methods: Sequence[str], out: str | Path, *,
                  params: dict[str, dict[str, Any]] | None = None, dataset_kind: str | None = None,
                  dataset_name: str | None = None, dataset_options: dict[str, Any] | None = None,
                  fit_data: str | Path | None = None, fit_frames: int = 20,
                  ensemble: Sequence[str | Path] = (), overwrite: bool = False, device: str = "cpu",
                  batch_size: int = 1, dtype: str = "float32", resolution: str = "head",
                  smooth: dict[str, Any] | None = None, preset: str | None = None, workers: int | None = None,
                  precision: str = "fp32", compression: str = "none") -> dict[str, Any]:
    """Score every frame of the dataset at ``images`` with ``methods`` and write the files into ``out``.

    Args:
        checkpoint: the segmentation model: an oodseg checkpoint directory or any model source
            (:mod:`oodseg.models.sources`: ``python:``, ``hf:``, ``torchvision:``, with ``?KEY=VALUE`` options).
        images: dataset root; ``dataset_kind`` defaults to :func:`oodseg.data.detect_kind`.
        methods: score names (``oodseg.scores.available()``), each optionally with its own parameters as
            ``name[key=value,...]`` (:func:`parse_method`); ``params`` gives per-method keywords for every
            instance of that name.
        out: output root. ``dataset_name`` overrides the dataset's folder name below it;
            ``dataset_options`` are layout options of :func:`oodseg.data.open_dataset` (e.g. ``split``).
        fit_data: Cityscapes-layout root whose train split (``fit_frames`` frames, evenly spaced)
            fits the fitted scores (``sml``, ``mahalanobis``); for ``maskomaly`` an OoD-labelled dataset
            root (e.g. a validation track), whose anomalies rank the queries.
        ensemble: further model sources; with ``checkpoint`` they form the members of ``ensemble``.
        overwrite: replace the maps (and provenance) of the requested methods; other methods are never touched.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun on GPUs: the local rank's GPU).
        batch_size: frames per forward pass (frames of equal size only).
        workers: frame-decoding processes and as many file-writing processes (None:
            :func:`oodseg.workflows.workers.default_workers`, half the cores, at most 8, inline below 4
            cores; 0: decode and write inline, one after the other; more than the frames: as many as the
            frames). Every setting writes the same bytes.
        precision: the forward's autocast (:data:`oodseg.workflows.pipeline.PRECISIONS`): ``fp32``
            (default), ``bf16``/``fp16`` (logits-based scores only), ``auto`` (bf16/fp16 on CUDA when
            every score allows it, else fp32).
        dtype: ``"float32"`` (default: files evaluate exactly like the in-memory maps) or
            ``"float16"`` (half the size; warns per method whose ranking it alters, with the
            measured change — AP/AUROC too when the dataset has OoD labels).
        compression: how the hdf5 files are stored (:data:`oodseg.data.io.COMPRESSIONS`): ``none`` (default:
            the fastest to write and read; gzip saves ~19 % of the bytes of float32 maps), ``gzip`` or ``lzf``.
            Not part of the run's identity: a rerun with another compression resumes.
        resolution: ``"head"`` (scores at the classifier's resolution, each map upsampled afterwards) or
            ``"image"`` (scores computed on the logits, ``z`` and extra heads upsampled to the image first,
            the model's ``align_corners``: how the papers that score their upsampled outputs compute).
        smooth: ``{"kernel_size": K, "sigma": S}``: each finished map at the image size is Gaussian-blurred
            (reflect padding, :func:`oodseg.scores.postprocess.gaussian_blur`), as RPL does; None: no blur.
        preset: name of the :mod:`oodseg.workflows.presets` preset this run expands (recorded only).
    Returns:
        The run's fields (checkpoint, dataset, ``methods``, ``complete``: every requested method is complete),
        ``manifests`` (method → manifest file), ``written`` / ``skipped`` frame counts of this process and
        ``seconds``; with float16 also ``float16``: ``{method: Float16Audit.summary()}`` over the frames written.
    """
    from oodseg import scores as score_registry

    started = time.perf_counter()
    if not methods:
        raise OodsegError("methods: give at least one score method")
    if batch_size < 1:
        raise OodsegError(f"batch_size: must be >= 1, got {batch_size}")
    if fit_frames < 1:
        raise OodsegError(f"fit_frames: must be >= 1, got {fit_frames}")
    check_choice("dtype", dtype, STORAGE_DTYPES)
    check_choice("compression", compression, COMPRESSIONS)
    check_choice("resolution", resolution, RESOLUTIONS)
    smooth = check_smooth(smooth)
    distributed.init()
    device = _resolve_device(device)
    params = params or {}
    specs = [parse_method(m) for m in methods]
    unknown = sorted(set(params) - {name for name, _ in specs})
    if unknown:
        raise OodsegError(f"params {unknown[0]}.*: method {unknown[0]!r} is not among the methods {', '.join(methods)}")

    model, meta = load_model_source(checkpoint, map_location=device)
    model = prepare_model(model, device)
    loaded = [_load_member(path, meta, device) for path in ensemble]
    members = [_member(model)] + [member for member, _ in loaded]
    scorers = [_build_scorer(score_registry, name, {**params.get(name, {}), **own}, members) for name, own in specs]
    keys = [s.key for s in scorers]
    for key in keys:
        check_name("methods", key)
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise OodsegError(f"methods: {duplicate!r} requested twice")
    if ensemble and not any(s.name == "ensemble" for s in scorers):
        raise OodsegError("ensemble: given but method 'ensemble' is not requested")
    per_query = [s.key for s in scorers if "masks" in s.needs]
    if per_query and not is_mask_classification(model):
        raise OodsegError(f"methods: {', '.join(per_query)} need a mask-classification model (class and mask logits "
                          f"per query, SPEC §9); {checkpoint} is a per-pixel network")
    _ood_fitted([s for s in scorers if s.needs_fit])
    if any(s.needs_fit for s in scorers) and fit_data is None:
        names = ", ".join(s.name for s in scorers if s.needs_fit)
        raise OodsegError(f"fit_data: required by the fitted score(s) {names} (a Cityscapes-layout root)")
    autocast = autocast_dtype(precision, device, scorers)
    if resolution == "image" and any("block" in s.needs for s in scorers):
        names = ", ".join(s.key for s in scorers if "block" in s.needs)
        raise OodsegError(f"resolution: {names} use the block before the head, which exists only at the head's "
                          "resolution; score them with resolution 'head'")

    if dataset_name is not None:
        check_name("dataset_name", dataset_name)
    if is_mask_classification(model):  # SPEC §9: per-query class and mask logits, aggregated per pixel
        hooks = MaskAdapter(model, resolution="mask" if resolution == "head" else "image")
        score_registry.refuse_head_scores(scorers, f"the mask-classification model of {checkpoint}")
    else:
        hooks = ModelAdapter(model, head=declared_head(model), capture_block=any("block" in s.needs for s in scorers))
        if hooks.logits_only and any(s.needs_head for s in scorers):  # refused before any file is written
            hooks.close()
            score_registry.refuse_head_scores(scorers, f"the model of {checkpoint}")
    kind = dataset_kind or detect_kind(images)
    _refuse_synthstreet_root(images, kind)
    options = {**(dataset_options or {}), **({"name": dataset_name} if dataset_name else {})}
    dataset = open_dataset(kind, images, labels="none", **options)
    check_name("dataset", dataset.name)
    out = Path(out)
    run, manifests = _manifests(checkpoint, meta, scorers, dataset, kind, out, ensemble, [sha for _, sha in loaded],
                                fit_data, fit_frames, dtype,
                                resolution, smooth, preset, autocast)
    ckpt = provenance.checkpoint_id(meta["weights_sha256"])
    todo_keys = _check_previous_run(out, dataset, run, manifests, overwrite)
    distributed.barrier()
    if distributed.is_main():
        if overwrite:
            _remove_outputs(out, dataset, todo_keys)
        _remove_partials(out, dataset.name, keys, ckpt)
        for key in todo_keys:
            write_json(manifest_path(out, key, dataset.name), manifests[key])
    distributed.barrier()

    adapter = hooks if resolution == "head" or isinstance(hooks, MaskAdapter) else ImageResolutionAdapter(
        hooks, any("features" in s.needs for s in scorers))
    audit = _Float16Run(keys, kind, images, options) if dtype == "float16" else None
    try:
        fitted = [s for s in scorers if s.needs_fit]
        if fitted:
            _fit_on_main(fitted, adapter, Path(fit_data), fit_frames, device)
        written, skipped = _on_every_rank(lambda: _score_frames(adapter, scorers, dataset, out, device, batch_size,
                                                                audit, smooth, ckpt, workers, autocast,
                                                                compression))
    finally:
        hooks.close()
    distributed.barrier()
    for key in todo_keys:
        manifests[key]["complete"] = _missing_outputs(out, dataset.name, dataset.fids, [key], ckpt) == 0
    if distributed.is_main():
        for key in todo_keys:
            write_json(manifest_path(out, key, dataset.name), manifests[key])
    distributed.barrier()
    summary = {**run, "methods": keys, "params": {key: manifests[key]["params"] for key in keys},
               "manifests": {key: str(manifest_path(out, key, dataset.name).resolve()) for key in keys},
               "complete": _missing_outputs(out, dataset.name, dataset.fids, keys, ckpt) == 0,
               "out": str(out.resolve()), "written": written, "skipped": skipped,
               "seconds": round(time.perf_counter() - started, 3)}
    if audit is not None:
        summary["float16"] = audit.report()
    return summary


class _Float16Run:
    """The float16 audits of one run (one per method key) and the dataset's OoD labels, when it has them."""

    def __init__(self, keys: Sequence[str], kind: str, images: str | Path, options: dict[str, Any]):
        self.audits = {key: Float16Audit(key) for key in keys}
        try:
            labelled = open_dataset(kind, images, labels="available", **options)
        except OodsegError:  # no labelled frame: the audit counts levels only
            labelled = None
        self.labels = labelled if labelled is not None and labelled.label_type == "ood" else None
        self.labelled_fids = set(self.labels.fids) if self.labels is not None else set()

    def label(self, fid: str) -> np.ndarray | None:
        """The frame's OoD label (0/1/255) or None."""
        return self.labels.read_label(fid) if fid in self.labelled_fids else None

    def report(self) -> dict[str, dict[str, Any]]:
        """Merge every rank's audits; warn (main rank) for each method whose ranking float16 alters."""
        gathered = distributed.all_gather_objects(self.audits)
        merged = {key: Float16Audit(key) for key in self.audits}
        for audits in gathered:
            for key, audit in audits.items():
                merged[key].merge(audit)
        if distributed.is_main():
            for audit in merged.values():
                message = audit.warning()
                if message:
                    warnings.warn(message, OodsegWarning, stacklevel=3)
        return {key: audit.summary() for key, audit in merged.items()}


# -- set-up ------------------------------------------------------------------------------------
def _resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise OodsegError(f"device: {device!r} is not a torch device") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise OodsegError(f"device: {device!r} requested but CUDA is not available")
        if resolved.index is None and distributed.world_size() > 1:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _load_member(path: str | Path | ModelSource, meta: dict[str, Any], device: torch.device):
    """(ensemble member, its weights' sha256) of a model source, checked against the main model's classes."""
    member, member_meta = load_model_source(path, map_location=device, num_classes=meta["num_classes"])
    if member_meta["classes"] != meta["classes"]:
        raise OodsegError(f"{path}: ensemble member's class names differ from the main checkpoint's")
    return _member(member), member_meta["weights_sha256"]


def _member(model: torch.nn.Module):
    """An ensemble member: the model, or its adapter on the head its source names (``head=``)."""
    head = declared_head(model)
    return model if head is None else ModelAdapter(model, head=head)


def _build_scorer(registry, name: str, params: dict[str, Any], members: list):
    """The scorer for ``name``; ``ensemble`` receives all member networks (the main one first) as ``models``."""
    if name == "ensemble":
        if len(members) < 2:
            raise OodsegError("ensemble: method 'ensemble' needs at least one further checkpoint")
        params = {**params, "models": members}
    return registry.get(name, **params)


def _needs_fit(scorers) -> bool:
    return any(s.needs_fit for s in scorers)


def _refuse_synthstreet_root(images: str | Path, kind: str) -> None:
    """A SynthStreet root read as a folder of images would score its label PNGs as photos: refuse it."""
    from oodseg.data.synthetic import MANIFEST_NAME

    if kind == "images" and (Path(images) / MANIFEST_NAME).is_file():
        raise OodsegError(f"images {images}: a SynthStreet root, not a folder of photos; score one of its tracks "
                          f"(e.g. --images {Path(images) / 'anomaly'}); train takes the root with --data")


def _manifests(checkpoint, meta, scorers, dataset, kind: str, out: Path, ensemble, ensemble_sha, fit_data, fit_frames: int,
               dtype: str, resolution: str, smooth, preset, autocast=None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(run fields, {method key: its manifest})``: provenance per method (:mod:`oodseg.provenance`), so
    a method's identity depends only on what it uses (ensemble members, fit data)."""
    sha = meta["weights_sha256"]
    ensemble_paths = [parse_model_source(p).spec() for p in ensemble]
    common = {"schema": provenance.SCHEMA, "version": provenance.VERSION, "checkpoint": parse_model_source(checkpoint).spec(),
              "checkpoint_sha256": sha, "classes": meta["classes"], "dataset": dataset.name, "dataset_kind": kind,
              "root": str(dataset.root), "n_frames": len(dataset), "dtype": dtype, "resolution": resolution,
              "smooth": smooth, "preset": preset,
              "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "fp32"),
              "predictions": predictions_dir(out, provenance.checkpoint_id(sha), dataset.name).relative_to(out).as_posix()}
    manifests = {}
    for s in scorers:
        members, fits = s.name == "ensemble", s.needs_fit
        manifests[s.key] = {**common, "method": s.key, "params": {k: v for k, v in s.params.items() if k != "models"},
                            "ensemble": ensemble_paths if members else [],
                            "ensemble_sha256": ensemble_sha if members else [],
                            "fit_data": str(Path(fit_data).resolve()) if fits else None,
                            "fit_frames": fit_frames if fits else None, "complete": False}
    fits = _needs_fit(scorers)
    run = {**common, "ensemble": ensemble_paths, "ensemble_sha256": ensemble_sha,
           "fit_data": str(Path(fit_data).resolve()) if fits else None, "fit_frames": fit_frames if fits else None}
    return run, manifests


def _check_previous_run(out: Path, dataset, run: dict[str, Any], manifests: dict[str, dict[str, Any]],
                        overwrite: bool) -> list[str]:
    """The methods to (re)score: a method whose maps the same settings completed is left alone, one with
    other settings, an earlier oodseg's or unexplained files is refused unless ``overwrite``; maps of
    another dataset root under the same dataset name are refused. Raises when nothing is left to do."""
    todo = []
    for key, manifest in manifests.items():
        previous = provenance.read_manifest(out, key, dataset.name)
        if previous is None:
            existing = next(_existing_outputs(out, dataset.name, dataset.fids, [key]), None)
            if existing is not None and not overwrite:
                raise OodsegError(f"{existing}: exists but no manifest describes it; pass --overwrite to replace it")
            todo.append(key)
            continue
        if previous["version"] != provenance.VERSION and not overwrite:
            raise OodsegError(f"{previous['path']}: {key} maps written by an earlier oodseg (one manifest for all "
                              f"methods, no checkpoint checksum); pass --overwrite to rescore {key}")
        differing = [k for k in provenance.IDENTITY
                     if previous.get(k, provenance.IDENTITY_DEFAULTS.get(k)) != manifest.get(k)]
        if differing and not overwrite:
            raise OodsegError(f"{previous['path']}: {key} maps of a different run ({', '.join(differing)} differ); "
                              f"pass --overwrite to replace the {key} maps")
        if overwrite or not previous.get("complete") or _missing_outputs(
                out, dataset.name, dataset.fids, [key], provenance.checkpoint_id(run["checkpoint_sha256"])):
            todo.append(key)
    for path in sorted(manifests_dir(out, dataset.name).glob("*.json")):
        other = provenance.read_manifest(out, path.stem, dataset.name)
        if other is not None and (other["dataset_kind"], other["root"]) != (run["dataset_kind"], run["root"]) \
                and not (overwrite and path.stem in manifests):
            raise OodsegError(f"{path}: dataset name {dataset.name!r} in {out} holds maps of {other['root']}; "
                              "give another --dataset-name or --out")
    if not todo:
        raise OodsegError(f"{out}: {', '.join(manifests)} already complete for dataset {dataset.name!r}; "
                          "pass --overwrite to redo it")
    return todo


def _output_paths(out: Path, dataset: str, fid: str, keys: Sequence[str], ckpt: str | None) -> list[Path]:
    """The score files of ``keys`` and, with ``ckpt`` (:func:`oodseg.provenance.checkpoint_id`), its prediction."""
    return [score_path(out, key, dataset, fid) for key in keys] + (
        [prediction_path(out, ckpt, dataset, fid)] if ckpt else [])


def _existing_outputs(out: Path, dataset: str, fids: Sequence[str], keys: Sequence[str],
                      ckpt: str | None = None) -> Iterator[Path]:
    return (p for fid in fids for p in _output_paths(out, dataset, fid, keys, ckpt) if p.is_file())


def _missing_outputs(out: Path, dataset: str, fids: Sequence[str], keys: Sequence[str], ckpt: str) -> int:
    return sum(not p.is_file() for fid in fids for p in _output_paths(out, dataset, fid, keys, ckpt))


def _remove_outputs(out: Path, dataset, keys: Sequence[str]) -> None:
    """Delete the maps of ``keys`` (an overwrite must not be resumed onto old files); predictions are kept:
    they are a function of the checkpoint (their folder is named by its weights' sha256) and the images."""
    for path in list(_existing_outputs(out, dataset.name, dataset.fids, keys)):
        path.unlink()


def _remove_partials(out: Path, dataset: str, keys: Sequence[str], ckpt: str) -> None:
    """Delete temporary ``.partial`` files left by an interrupted run (the lock on ``out`` says none is live)."""
    for folder in [scores_dir(out, key, dataset) for key in keys] + [predictions_dir(out, ckpt, dataset)]:
        if folder.is_dir():
            for path in folder.glob(".*.partial*"):
                path.unlink(missing_ok=True)


# -- distributed helpers -------------------------------------------------------------------------
def _on_every_rank(work: Callable[[], T]) -> T:
    """Run ``work`` on every rank; when any rank fails, every rank raises (none waits forever)."""
    failure, result = None, None
    try:
        result = work()
    except Exception as exc:  # re-raised below, after telling the other ranks
        failure = exc
    messages = distributed.all_gather_objects(None if failure is None else one_line(failure))
    if failure is not None:
        raise failure
    reported = next(((r, m) for r, m in enumerate(messages) if m), None)
    if reported:
        raise OodsegError(f"rank {reported[0]}: {reported[1]}")
    return result


def _fit_on_main(fitted, adapter: ModelAdapter, root: Path, frames: int, device: torch.device) -> None:
    """Fit on rank 0 and copy the fitted statistics to the other ranks."""
    def fit_and_export():
        if not distributed.is_main():
            return None
        _fit(fitted, adapter, root, frames, device)
        return [{k: v.cpu() for k, v in s.state_dict().items()} for s in fitted]

    states = _on_every_rank(fit_and_export)
    states = distributed.all_gather_objects(states)[0]
    if not distributed.is_main():
        for scorer, state in zip(fitted, states):
            scorer.load_state_dict(state)


# -- fitting --------------------------------------------------------------------------------------
def _ood_fitted(fitted) -> list[str]:
    """Names of the fitted scorers that fit on OoD labels (``fit_labels == "ood"``); OodsegError when they are
    mixed with scorers fitted on Cityscapes trainIds (one ``fit_data`` cannot serve both)."""
    ood = [s.name for s in fitted if getattr(s, "fit_labels", "trainIds") == "ood"]
    if ood and len(ood) < len(fitted):
        others = ", ".join(s.name for s in fitted if s.name not in ood)
        raise OodsegError(f"fit_data: {', '.join(ood)} fit on anomaly labels, {others} on Cityscapes train; "
                          "score them in separate runs")
    return ood


def _fit(fitted, adapter: ModelAdapter, root: Path, frames: int, device: torch.device) -> None:
    """Fit each fitted scorer on ``frames`` evenly spaced frames of ``root``: the Cityscapes train split
    (trainId labels), or, for scores that fit on anomaly labels (``fit_labels == "ood"``: ``maskomaly``),
    the annotated OoD dataset at ``root`` (kind detected; 0/1/255 labels)."""
    ood = _ood_fitted(fitted)
    if ood:
        data, where = open_dataset(detect_kind(root), root, labels="auto"), f"fitting on {root.name} (OoD labels)"
    else:
        data, where = open_dataset("cityscapes", root, split="train", labels="auto"), "fitting on Cityscapes train"
    picks = np.unique(np.linspace(0, len(data) - 1, min(frames, len(data))).round().astype(int))

    def pairs() -> Iterator[tuple]:
        for index in track(picks.tolist(), where):
            sample = data[index]
            if ood and sample.label is None:
                raise OodsegError(f"fit_data: frame {sample.fid} of {root} has no OoD label; {', '.join(ood)} "
                                  "fit on annotated validation frames")
            images = image_to_tensor(sample.image)[None].to(device)
            with torch.no_grad():
                out = adapter(images)
            label = None if sample.label is None else label_to_tensor(sample.label)[None].to(device)
            yield out, label

    for scorer in fitted:
        outputs, labels = (itertools.tee(pairs()))
        scorer.fit((o for o, _ in outputs), (lab for _, lab in labels))


# -- scoring --------------------------------------------------------------------------------------
def _score_frames(adapter: ModelAdapter, scorers, dataset, out: Path, device: torch.device,
                  batch_size: int, audit: _Float16Run | None, smooth: dict[str, Any] | None,
                  ckpt: str, workers: int | None = 0, autocast: torch.dtype | None = None,
                  compression: str = "none") -> tuple[int, int]:
    """Score this rank's frames that have missing outputs; returns (frames written, frames skipped).

    ``ckpt``: the checkpoint's prediction folder name (:func:`oodseg.provenance.checkpoint_id`).
    Frames are decoded by ``workers`` processes and the files written by as many writer processes
    (:mod:`oodseg.workflows.pipeline`, :mod:`oodseg.workflows.workers`; 0: both inline). With ``audit``
    (float16 storage) every map is written as float16 and audited first; ``smooth`` blurs every map
    (see :func:`score_dataset`); ``autocast``: the forward's reduced precision (None: float32);
    ``compression``: of the hdf5 files (:data:`oodseg.data.io.COMPRESSIONS`).
    """
    mine = distributed.shard(dataset.fids)
    todo = {fid: [s for s in scorers if not score_path(out, s.key, dataset.name, fid).is_file()] for fid in mine}
    pending = [fid for fid in mine if todo[fid] or not prediction_path(out, ckpt, dataset.name, fid).is_file()]
    workers = resolve_workers(workers, len(pending))
    storage = "float32" if audit is None else "float16"
    align = adapter.align_corners
    written = 0
    frames = decoded_frames(dataset, pending, workers, device)
    with WriterPool(workers) as writer:
        for chunk in _chunks(track(frames, f"scoring {dataset.name}", total=len(pending)), batch_size):
            for group in _same_size_groups(chunk):
                fids = [fid for fid, _ in group]
                images = to_model_input([image for _, image in group], device)
                size = tuple(images.shape[-2:])
                needed = [s for s in scorers if any(s in todo[fid] for fid in fids)]
                try:
                    maps, logits = _score_batch(adapter, needed, images, autocast)
                except OodsegError as exc:
                    names = ", ".join(s.key for s in needed)
                    raise OodsegError(f"frame {', '.join(fids)} (methods {names}): {exc}") from exc
                maps = {key: value.float().cpu() for key, value in maps.items()}
                # logits at the head's resolution go to the writers; at the image size (resolution "image")
                # they are 16x larger than their argmax, which is taken here
                at_image = tuple(logits.shape[-2:]) == size
                logits = (predict(logits, size, align) if at_image else logits.float()).cpu().numpy()
                for i, fid in enumerate(fids):
                    frame_maps = {s.key: maps[s.key][i] for s in todo[fid]}
                    for key, value in frame_maps.items():
                        if not bool(torch.isfinite(value).all()):
                            raise OodsegError(f"frame {fid}, method {key}: score contains NaN or Inf; "
                                              "nothing written for this frame")
                    jobs = []  # one writer job per frame: its maps, then its prediction
                    for key, value in frame_maps.items():
                        path = score_path(out, key, dataset.name, fid)
                        if audit is None:  # upsampled, blurred and written by a writer
                            jobs.append((write_map, path, (value.numpy(), size, align, smooth, storage, compression)))
                            continue
                        value = finish_maps(value[None], size, align, smooth)[0].numpy()
                        audit.audits[key].update(value, audit.label(fid))
                        jobs.append((write_score, path, (value, storage, compression)))
                    path = prediction_path(out, ckpt, dataset.name, fid)
                    jobs.append((write_png, path, (logits[i],)) if at_image else
                                (write_prediction, path, (logits[i], size, align)))
                    writer.submit_batch(jobs)
                    written += 1
    return written, len(mine) - len(pending)


def _score_batch(adapter: ModelAdapter, scorers, images: torch.Tensor, autocast: torch.dtype | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All ``scorers`` on one batch at the head's resolution: ``({key: (B, h, w)}, logits (B, C, h, w))``
    (:func:`oodseg.workflows.pipeline.finish_maps` and :func:`~oodseg.workflows.pipeline.predict` bring
    them to the image size); ``autocast``: the forward runs in that dtype and the scores on its
    float32-cast logits."""
    from oodseg.scores import compute

    output_based = [s for s in scorers if not s.runs_model]
    with torch.no_grad():
        with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
            out = adapter(images)
        if autocast is not None:
            out = dataclasses.replace(out, logits=out.logits.float(),
                                      extras={name: value.float() for name, value in out.extras.items()})
        maps = compute(output_based, out) if output_based else {}
    for scorer in scorers:
        if scorer.runs_model:
            maps[scorer.key] = scorer(adapter, images).detach()
    return maps, out.logits


def _chunks(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _same_size_groups(frames: list[tuple[str, torch.Tensor]]) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive runs of ``(fid, image)`` with equal image shape (one forward pass each)."""
    return [list(group) for _, group in itertools.groupby(frames, key=lambda frame: frame[1].shape)]
