"""Score a dataset into files: ``{out}/{method}/{dataset}/{fid}.hdf5`` for every requested method.

Per batch of frames the model runs once through the :class:`~oodseg.adapter.ModelAdapter` (a
mask-classification model through :class:`~oodseg.mask_adapter.MaskAdapter`);
all output-based scores are computed together (:func:`oodseg.scores.compute` shares the
work), model-based ones (MC dropout, ODIN, ensembles) run the model themselves. Every map is
upsampled bilinearly (``align_corners=False``) to the image size and written as SMIYC hdf5
(float32 by default, so the files evaluate exactly like the maps; gzip); the argmax prediction
goes to ``{out}/_prediction/{dataset}/{fid}.png`` and the run's description to
``{out}/_manifest/{dataset}.json`` (schema ``oodseg.score``). With ``dtype="float16"`` (compact
benchmark submissions) every written map is audited (:class:`~oodseg.metrics.quantization.Float16Audit`)
and a method whose ranking float16 alters gets an :class:`~oodseg.errors.OodsegWarning`.

A run is resumable: a file exists under its final name only when complete (atomic writes),
so a rerun with the same checkpoint, data and methods scores only what is missing. A
finished or different run in ``out`` is replaced only with ``overwrite=True``. Under
``torchrun`` every rank scores its share of the frames (rank-strided).
"""
from __future__ import annotations

import itertools
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from oodseg import distributed
from oodseg.adapter import ImageResolutionAdapter, ModelAdapter
from oodseg.conventions import image_to_tensor, resize_map
from oodseg.atomic import atomic_path, write_json
from oodseg.data import detect_kind, open_dataset, write_score
from oodseg.data.io import STORAGE_DTYPES
from oodseg.data.transforms import label_to_tensor
from oodseg.keyvalue import parse_pairs
from oodseg.mask_adapter import MaskAdapter, is_mask_classification
from oodseg.layout import manifest_path, prediction_path, predictions_dir, score_path, scores_dir
from oodseg.errors import OodsegError, OodsegWarning, check_choice
from oodseg.metrics.quantization import Float16Audit
from oodseg.models import load_checkpoint
from oodseg.progress import track
from oodseg.scores.postprocess import check_smooth, gaussian_blur
from oodseg.workflows.presets import RESOLUTIONS

MANIFEST_SCHEMA = "oodseg.score"
MANIFEST_VERSION = 1
#: Manifest fields that must agree for a rerun to count as resuming the same run.
RUN_IDENTITY = ("checkpoint", "dataset", "dataset_kind", "root", "methods", "ensemble", "fit_data", "fit_frames",
                "dtype", "resolution", "smooth")
#: Values of identity fields that manifests of earlier oodseg versions do not record.
RUN_DEFAULTS = {"resolution": "head", "smooth": None}

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


def score_dataset(checkpoint: str | Path, images: str | Path, methods: Sequence[str], out: str | Path, *,
                  params: dict[str, dict[str, Any]] | None = None, dataset_kind: str | None = None,
                  dataset_name: str | None = None, dataset_options: dict[str, Any] | None = None,
                  fit_data: str | Path | None = None, fit_frames: int = 20,
                  ensemble: Sequence[str | Path] = (), overwrite: bool = False, device: str = "cpu",
                  batch_size: int = 1, dtype: str = "float32", resolution: str = "head",
                  smooth: dict[str, Any] | None = None, preset: str | None = None) -> dict[str, Any]:
    """Score every frame of the dataset at ``images`` with ``methods`` and write the files into ``out``.

    Args:
        checkpoint: oodseg checkpoint directory of the segmentation model.
        images: dataset root; ``dataset_kind`` defaults to :func:`oodseg.data.detect_kind`.
        methods: score names (``oodseg.scores.available()``), each optionally with its own parameters as
            ``name[key=value,...]`` (:func:`parse_method`); ``params`` gives per-method keywords for every
            instance of that name.
        out: output root. ``dataset_name`` overrides the dataset's folder name below it;
            ``dataset_options`` are layout options of :func:`oodseg.data.open_dataset` (e.g. ``split``).
        fit_data: Cityscapes-layout root whose train split (``fit_frames`` frames, evenly spaced)
            fits the fitted scores (``sml``, ``mahalanobis``); for ``maskomaly`` an OoD-labelled dataset
            root (e.g. a validation track), whose anomalies rank the queries.
        ensemble: further checkpoints; with ``checkpoint`` they form the members of ``ensemble``.
        overwrite: replace a finished or different run's files.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun on GPUs: the local rank's GPU).
        batch_size: frames per forward pass (frames of equal size only).
        dtype: ``"float32"`` (default: files evaluate exactly like the in-memory maps) or
            ``"float16"`` (half the size; warns per method whose ranking it alters, with the
            measured change — AP/AUROC too when the dataset has OoD labels).
        resolution: ``"head"`` (scores at the classifier's resolution, each map upsampled afterwards) or
            ``"image"`` (scores computed on the logits, ``z`` and extra heads upsampled to the image first,
            the model's ``align_corners``: how the papers that score their upsampled outputs compute).
        smooth: ``{"kernel_size": K, "sigma": S}``: each finished map at the image size is Gaussian-blurred
            (reflect padding, :func:`oodseg.scores.postprocess.gaussian_blur`), as RPL does; None: no blur.
        preset: name of the :mod:`oodseg.workflows.presets` preset this run expands (recorded only).
    Returns:
        The manifest dict plus ``written`` / ``skipped`` frame counts of this process and ``seconds``;
        with float16 also ``float16``: ``{method: Float16Audit.summary()}`` over the frames written.
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
    check_choice("resolution", resolution, RESOLUTIONS)
    smooth = check_smooth(smooth)
    distributed.init()
    device = _resolve_device(device)
    params = params or {}
    specs = [parse_method(m) for m in methods]
    unknown = sorted(set(params) - {name for name, _ in specs})
    if unknown:
        raise OodsegError(f"params {unknown[0]}.*: method {unknown[0]!r} is not among the methods {', '.join(methods)}")

    model, meta = load_checkpoint(checkpoint, map_location=device)
    members = [model] + [_load_member(path, meta, device) for path in ensemble]
    scorers = [_build_scorer(score_registry, name, {**params.get(name, {}), **own}, members) for name, own in specs]
    keys = [s.key for s in scorers]
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
    if resolution == "image" and any("block" in s.needs for s in scorers):
        names = ", ".join(s.key for s in scorers if "block" in s.needs)
        raise OodsegError(f"resolution: {names} use the block before the head, which exists only at the head's "
                          "resolution; score them with resolution 'head'")

    if is_mask_classification(model):  # SPEC §9: per-query class and mask logits, aggregated per pixel
        hooks = MaskAdapter(model, resolution="mask" if resolution == "head" else "image")
        score_registry.refuse_head_scores(scorers, f"the mask-classification model of {checkpoint}")
    else:
        hooks = ModelAdapter(model, capture_block=any("block" in s.needs for s in scorers))
        if hooks.logits_only and any(s.needs_head for s in scorers):  # refused before any file is written
            hooks.close()
            score_registry.refuse_head_scores(scorers, f"the model of {checkpoint}")
    kind = dataset_kind or detect_kind(images)
    options = {**(dataset_options or {}), **({"name": dataset_name} if dataset_name else {})}
    dataset = open_dataset(kind, images, labels="none", **options)
    manifest = {"schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION,
                "checkpoint": str(Path(checkpoint).resolve()), "dataset": dataset.name, "dataset_kind": kind,
                "root": str(dataset.root), "methods": keys, "n_frames": len(dataset),
                "ensemble": [str(Path(p).resolve()) for p in ensemble],
                "fit_data": str(Path(fit_data).resolve()) if fit_data and _needs_fit(scorers) else None,
                "fit_frames": fit_frames if _needs_fit(scorers) else None,
                "params": {s.key: {k: v for k, v in s.params.items() if k != "models"} for s in scorers},
                "classes": meta["classes"], "dtype": dtype, "resolution": resolution, "smooth": smooth,
                "preset": preset, "complete": False}
    out = Path(out)
    _check_previous_run(out, dataset, keys, manifest, overwrite)
    distributed.barrier()
    if distributed.is_main():
        if overwrite:
            _remove_outputs(out, dataset, keys)
        _remove_partials(out, dataset.name, keys)
        write_json(manifest_path(out, dataset.name), manifest)
    distributed.barrier()

    adapter = hooks if resolution == "head" or isinstance(hooks, MaskAdapter) else ImageResolutionAdapter(
        hooks, any("features" in s.needs for s in scorers))
    audit = _Float16Run(keys, kind, images, options) if dtype == "float16" else None
    try:
        fitted = [s for s in scorers if s.needs_fit]
        if fitted:
            _fit_on_main(fitted, adapter, Path(fit_data), fit_frames, device)
        written, skipped = _on_every_rank(lambda: _score_frames(adapter, scorers, dataset, out, device, batch_size,
                                                                audit, smooth))
    finally:
        hooks.close()
    distributed.barrier()
    manifest["complete"] = _missing_outputs(out, dataset.name, dataset.fids, keys) == 0
    if distributed.is_main():
        write_json(manifest_path(out, dataset.name), manifest)
    distributed.barrier()
    summary = {**manifest, "out": str(out.resolve()), "written": written, "skipped": skipped,
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


def _load_member(path: str | Path, meta: dict[str, Any], device: torch.device) -> torch.nn.Module:
    member, member_meta = load_checkpoint(path, map_location=device, num_classes=meta["num_classes"])
    if member_meta["classes"] != meta["classes"]:
        raise OodsegError(f"{path}: ensemble member's class names differ from the main checkpoint's")
    return member


def _build_scorer(registry, name: str, params: dict[str, Any], members: list[torch.nn.Module]):
    """The scorer for ``name``; ``ensemble`` receives all member networks (the main one first) as ``models``."""
    if name == "ensemble":
        if len(members) < 2:
            raise OodsegError("ensemble: method 'ensemble' needs at least one further checkpoint")
        params = {**params, "models": members}
    return registry.get(name, **params)


def _needs_fit(scorers) -> bool:
    return any(s.needs_fit for s in scorers)


def _check_previous_run(out: Path, dataset, keys: list[str], manifest: dict[str, Any], overwrite: bool) -> None:
    """Refuse to touch a finished or different run's outputs unless ``overwrite``; allow resuming."""
    if overwrite:
        return
    path = manifest_path(out, dataset.name)
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OodsegError(f"{path}: corrupt manifest ({exc}); pass --overwrite to start afresh") from exc
        differing = [k for k in RUN_IDENTITY if previous.get(k, RUN_DEFAULTS.get(k)) != manifest.get(k)]
        if previous.get("schema") != MANIFEST_SCHEMA or differing:
            raise OodsegError(f"{path}: outputs of a different run ({', '.join(differing) or 'schema'} differ); "
                              "pass --overwrite to replace them")
        if _missing_outputs(out, dataset.name, dataset.fids, keys) == 0:
            raise OodsegError(f"{out}: this run is already complete for dataset {dataset.name!r}; "
                              "pass --overwrite to redo it")
        return
    existing = next(_existing_outputs(out, dataset.name, dataset.fids, keys), None)
    if existing is not None:
        raise OodsegError(f"{existing}: exists but no manifest describes it; pass --overwrite to replace it")


def _output_paths(out: Path, dataset: str, fid: str, keys: Sequence[str]) -> list[Path]:
    return [score_path(out, key, dataset, fid) for key in keys] + [prediction_path(out, dataset, fid)]


def _existing_outputs(out: Path, dataset: str, fids: Sequence[str], keys: Sequence[str]) -> Iterator[Path]:
    return (p for fid in fids for p in _output_paths(out, dataset, fid, keys) if p.is_file())


def _missing_outputs(out: Path, dataset: str, fids: Sequence[str], keys: Sequence[str]) -> int:
    return sum(not p.is_file() for fid in fids for p in _output_paths(out, dataset, fid, keys))


def _remove_outputs(out: Path, dataset, keys: Sequence[str]) -> None:
    """Delete the files this run would write (an overwrite must not be resumed onto old files)."""
    for path in list(_existing_outputs(out, dataset.name, dataset.fids, keys)):
        path.unlink()


def _remove_partials(out: Path, dataset: str, keys: Sequence[str]) -> None:
    """Delete temporary ``.partial`` files left by an interrupted run."""
    for folder in [scores_dir(out, key, dataset) for key in keys] + [predictions_dir(out, dataset)]:
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
    messages = distributed.all_gather_objects(None if failure is None else _one_line(failure))
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


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, OodsegError) else f"{type(exc).__name__}: {text}"


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
                  batch_size: int, audit: _Float16Run | None, smooth: dict[str, Any] | None) -> tuple[int, int]:
    """Score this rank's frames that have missing outputs; returns (frames written, frames skipped).

    With ``audit`` (float16 storage) every map is written as float16 and audited first; ``smooth``
    blurs every map (see :func:`score_dataset`).
    """
    mine = distributed.shard(dataset.fids)
    todo = {fid: [s for s in scorers if not score_path(out, s.key, dataset.name, fid).is_file()] for fid in mine}
    pending = [fid for fid in mine if todo[fid] or not prediction_path(out, dataset.name, fid).is_file()]
    written = 0
    for chunk in _chunks(track(pending, f"scoring {dataset.name}", total=len(pending)), batch_size):
        samples = [dataset[fid] for fid in chunk]
        for group in _same_size_groups(samples):
            images = torch.stack([image_to_tensor(s.image) for s in group]).to(device)
            needed = [s for s in scorers if any(s in todo[x.fid] for x in group)]
            try:
                maps, prediction = _score_batch(adapter, needed, images, smooth)
            except OodsegError as exc:
                names = ", ".join(s.key for s in needed)
                raise OodsegError(f"frame {', '.join(x.fid for x in group)} (methods {names}): {exc}") from exc
            for i, sample in enumerate(group):
                frame_maps = {s.key: maps[s.key][i] for s in todo[sample.fid]}
                for key, value in frame_maps.items():
                    if not bool(torch.isfinite(value).all()):
                        raise OodsegError(f"frame {sample.fid}, method {key}: score contains NaN or Inf; "
                                          "nothing written for this frame")
                label = audit.label(sample.fid) if audit is not None else None
                for key, value in frame_maps.items():
                    value = value.cpu().numpy()
                    if audit is not None:
                        audit.audits[key].update(value, label)
                    write_score(score_path(out, key, dataset.name, sample.fid), value,
                                dtype="float32" if audit is None else "float16")
                _write_prediction(prediction_path(out, dataset.name, sample.fid), prediction[i])
                written += 1
    return written, len(mine) - len(pending)


def _score_batch(adapter: ModelAdapter, scorers, images: torch.Tensor, smooth: dict[str, Any] | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All ``scorers`` on one batch: ``({key: (B, H, W) float32 at image size}, (B, H, W) uint8 argmax)``;
    with ``smooth``, each map Gaussian-blurred at the image size."""
    from oodseg.scores import compute

    size = tuple(images.shape[-2:])
    output_based = [s for s in scorers if not s.runs_model]
    with torch.no_grad():
        out = adapter(images)
        maps = compute(output_based, out) if output_based else {}
        prediction = out.upsampled_logits().argmax(dim=1).to(torch.uint8)
    for scorer in scorers:
        if scorer.runs_model:
            maps[scorer.key] = scorer(adapter, images).detach()
    with torch.no_grad():
        maps = {key: resize_map(value.float(), size, adapter.align_corners) for key, value in maps.items()}
        if smooth is not None:
            maps = {key: gaussian_blur(value, **smooth) for key, value in maps.items()}
    return maps, prediction


def _write_prediction(path: Path, prediction: torch.Tensor) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(prediction.cpu().numpy()).save(tmp, format="PNG")


def _chunks(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _same_size_groups(samples) -> list[list]:
    """Consecutive runs of samples with equal image shape (one forward pass each)."""
    return [list(group) for _, group in itertools.groupby(samples, key=lambda s: s.image.shape)]
