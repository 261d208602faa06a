"""Checkpoints: a directory with ``model.safetensors`` (state dict) and ``model.json`` (metadata).

``model.json``: ``{"format": "oodseg.checkpoint", "version": 1, "architecture", "params",
"num_classes", "classes", "oodseg_version", "weights_sha256", ...extra}``. Both files are
written atomically (weights first, metadata last), so a reader never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from oodseg.atomic import atomic_path, write_json
from oodseg.classes import CITYSCAPES_CLASSES
from oodseg.errors import OodsegError
from oodseg.models.registry import build_model

FORMAT = "oodseg.checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
_RESERVED = frozenset({"format", "version", "architecture", "params", "num_classes", "classes",
                       "oodseg_version", "weights_sha256"})


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, architecture: str, params: dict[str, Any],
                    classes: Sequence[str] | None = None, **extra: Any) -> Path:
    """Save ``model`` (built as ``build_model(architecture, **params)``) into ``directory``.

    ``classes`` defaults to the Cityscapes names for 19 classes, else ``class_0..``. ``extra``
    keys (JSON-serialisable) are stored in ``model.json``. Returns the directory path.
    """
    from oodseg import __version__

    directory = Path(directory)
    params = _jsonable(dict(params), "params")
    num_classes = _model_num_classes(model, params)
    if classes is None:
        classes = CITYSCAPES_CLASSES if num_classes == 19 else [f"class_{i}" for i in range(num_classes)]
    classes = [str(c) for c in classes]
    if len(classes) != num_classes:
        raise OodsegError(f"{directory}: {len(classes)} class names for a {num_classes}-class model")
    clash = _RESERVED.intersection(extra)
    if clash:
        raise OodsegError(f"{directory}: extra metadata may not use reserved keys {sorted(clash)}")
    state = _tensors_for_saving(model)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
        digest = _sha256(tmp)
    meta = {"format": FORMAT, "version": VERSION, "architecture": architecture, "params": params,
            "num_classes": num_classes, "classes": classes, "oodseg_version": __version__,
            "weights_sha256": digest, **_jsonable(extra, "extra metadata")}
    write_json(directory / META_FILE, meta)
    return directory


def _tensors_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as detached, contiguous CPU tensors, copied only where needed.

    safetensors refuses tensors sharing memory, so a tensor whose storage an earlier one uses is
    cloned; the others are written in place (an imported 550 MB network is not duplicated).
    """
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        elif pointer:
            seen.add(pointer)
        state[name] = tensor
    return state


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``model.json`` of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise OodsegError(f"{directory}: checkpoint directory does not exist")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise OodsegError(f"{meta_path}: missing (not an oodseg checkpoint)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OodsegError(f"{meta_path}: corrupt JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OodsegError(f"{meta_path}: not an oodseg checkpoint (format must be {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise OodsegError(f"{meta_path}: unsupported checkpoint version {meta.get('version')!r} (expected {VERSION})")
    for key, kind in (("architecture", str), ("params", dict), ("num_classes", int), ("classes", list)):
        if not isinstance(meta.get(key), kind):
            raise OodsegError(f"{meta_path}: field {key!r} missing or not a {kind.__name__}")
    digest = meta.get("weights_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise OodsegError(f"{meta_path}: field 'weights_sha256' missing or not a sha256 hex digest (every checkpoint "
                          "oodseg writes records the checksum of its weights; re-import or re-save the checkpoint)")
    if len(meta["classes"]) != meta["num_classes"]:
        raise OodsegError(f"{meta_path}: {len(meta['classes'])} class names but num_classes={meta['num_classes']}")
    return meta


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                    num_classes: int | None = None, architecture: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint as ``(model in eval mode on map_location, metadata dict)``.

    ``num_classes`` / ``architecture``, when given, must match the checkpoint's.
    """
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    if architecture is not None and meta["architecture"] != architecture:
        raise OodsegError(f"{directory}: checkpoint architecture is {meta['architecture']!r}, expected {architecture!r}")
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise OodsegError(f"{directory}: checkpoint has {meta['num_classes']} classes, expected {num_classes}")
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise OodsegError(f"{weights_path}: missing")
    if _sha256(weights_path) != meta["weights_sha256"]:
        raise OodsegError(f"{weights_path}: checksum differs from {META_FILE} (corrupt or replaced weights)")
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise OodsegError(f"{weights_path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from exc
    model = build_model(meta["architecture"], **meta["params"])
    _check_state(model, state, weights_path)
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model, meta


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a one-line OodsegError naming the first key/shape mismatches between ``model`` and ``state``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise OodsegError(f"{path}: state dict does not fit the architecture: {'; '.join(problems)}")


def _model_num_classes(model: nn.Module, params: dict[str, Any]) -> int:
    """Class count from ``params['num_classes']`` or ``model.num_classes``; both must agree when present."""
    from_params = params.get("num_classes")
    from_model = getattr(model, "num_classes", None)
    if from_params is not None and from_model is not None and int(from_params) != int(from_model):
        raise OodsegError(f"params: num_classes={from_params} but the model has {from_model} classes")
    value = from_params if from_params is not None else from_model
    if value is None:
        raise OodsegError("params: num_classes is required (the model has no num_classes attribute)")
    return int(value)


def _jsonable(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """``obj`` with tuples turned into lists; an OodsegError when it is not JSON-serialisable."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise OodsegError(f"{what}: not JSON-serialisable ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
