"""Per-frame softmax probabilities (and optional PGN maps) for segment features.

Two sources, chosen by :func:`open_probabilities`:

- a **model**: a checkpoint directory (``model.json`` + ``model.safetensors``) or any source of
  :mod:`oodseg.models.sources` (``python:``, ``hf:``, ``torchvision:``); it runs on each
  frame through :class:`~oodseg.adapter.ModelAdapter`; logits are upsampled bilinearly
  (the model's ``align_corners``) to the image size, then softmax → ``probs`` (C, H, W). With
  ``gradient=True`` the last-layer PGN maps (``variant="paper"``, labels one-hot and uniform,
  p ∈ {0.1, 0.3, 0.5, 1, 2}) are computed at the head's resolution and upsampled the same way;
- a **folder of saved maps** ``{dir}/{fid}.npz`` holding the array ``probs``: float16 (or
  float32) softmax probabilities, shape (C, H, W) at the image size. Write them with
  :func:`write_probabilities`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from oodseg.conventions import image_to_tensor
from oodseg.atomic import atomic_path
from oodseg.errors import OodsegError
from oodseg.scores.gradient import LABELS, PAPER_P

PROBS_KEY = "probs"
#: Tolerance on |Σ_c p_c - 1| of saved probabilities (float16 storage rounds each value).
_SUM_TOLERANCE = 0.02


def gradient_map_names() -> list[str]:
    """Names of the PGN maps: ``pgn_onehot_p0.1``, ..., ``pgn_uniform_p2``."""
    return [f"pgn_{label}_p{p:g}" for label in LABELS for p in PAPER_P]


def write_probabilities(path: str | os.PathLike, probs) -> Path:
    """Save softmax probabilities (C, H, W) as ``.npz`` (array ``probs``, float16, compressed), atomically."""
    path = Path(path)
    probs = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs, dtype=np.float32)
    _check_probs(probs, path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{PROBS_KEY: probs.astype(np.float16)})
    return path


def read_probabilities(path: str | os.PathLike) -> np.ndarray:
    """Read ``{fid}.npz`` → float32 (C, H, W); one-line OodsegError when missing, corrupt or not probabilities."""
    path = Path(path)
    if not path.is_file():
        raise OodsegError(f"{path}: probability file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if PROBS_KEY not in npz.files:
                raise OodsegError(f"{path}: no array {PROBS_KEY!r} in the .npz file")
            probs = npz[PROBS_KEY].astype(np.float32)
    except OodsegError:
        raise
    except Exception as exc:  # numpy/zipfile raise many types on corrupt files
        raise OodsegError(f"{path}: unreadable probability file ({type(exc).__name__})") from None
    _check_probs(probs, path)
    return probs


def _check_probs(probs: np.ndarray, where) -> None:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise OodsegError(f"{where}: expected probabilities of shape (C, H, W) with C >= 2, got {probs.shape}")
    if not np.isfinite(probs).all():
        raise OodsegError(f"{where}: probabilities contain NaN or Inf")
    if probs.min() < 0 or np.abs(probs.sum(axis=0) - 1).max() > _SUM_TOLERANCE:
        raise OodsegError(f"{where}: not softmax probabilities (negative values or classes not summing to 1)")


class FolderProbabilities:
    """Saved maps ``{folder}/{fid}.npz``; all frames must have the same class count."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise OodsegError(f"probs {self.folder}: not a checkpoint or a folder of {{fid}}.npz probability maps")
        self.num_classes: int | None = None

    def __call__(self, sample) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probs float32 (C, H, W), {})`` of one dataset sample."""
        path = self.folder / f"{sample.fid}.npz"
        probs = read_probabilities(path)
        if self.num_classes is None:
            self.num_classes = probs.shape[0]
        elif probs.shape[0] != self.num_classes:
            raise OodsegError(f"{path}: {probs.shape[0]} classes, other frames have {self.num_classes}")
        return probs, {}

    def close(self) -> None:
        pass


class CheckpointProbabilities:
    """Runs a checkpoint on each frame: softmax of the upsampled logits, optionally PGN maps."""

    def __init__(self, checkpoint: str | os.PathLike, gradient: bool = False, device: str = "cpu"):
        from oodseg import scores
        from oodseg.adapter import ModelAdapter
        from oodseg.models.sources import declared_head, load_model_source

        self.device = torch.device(device)
        model, meta = load_model_source(checkpoint, map_location=self.device)
        self.num_classes = int(meta["num_classes"])
        self.classes = list(meta["classes"])
        self.adapter = ModelAdapter(model, head=declared_head(model))
        self.scorers = [scores.get("pgn", label=label, p=p) for label in LABELS for p in PAPER_P] if gradient else []

    def __call__(self, sample) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probs float32 (C, H, W), {pgn map name: float32 (H, W)})`` of one dataset sample."""
        from oodseg.scores import compute

        images = image_to_tensor(sample.image)[None].to(self.device)
        size = tuple(images.shape[-2:])
        with torch.no_grad():
            out = self.adapter(images)
            probs = torch.softmax(out.upsampled_logits(size).float(), dim=1)[0]
            maps = {}
            if self.scorers:
                raw = compute(self.scorers, out)
                for name, scorer in zip(gradient_map_names(), self.scorers):
                    maps[name] = out.upsample(raw[scorer.key].float(), size)[0].cpu().numpy()
        return probs.cpu().numpy(), maps

    def close(self) -> None:
        self.adapter.close()


def open_probabilities(path: str | os.PathLike, gradient: bool = False, device: str = "cpu"):
    """A callable ``source(sample) -> (probs, gradient maps)``: a model (a checkpoint directory or any
    :mod:`oodseg.models.sources` source) or a folder of ``.npz``."""
    from oodseg.models.sources import is_model_source

    if is_model_source(path):
        return CheckpointProbabilities(path, gradient=gradient, device=device)
    path = Path(path)
    if gradient:
        raise OodsegError(f"probs {path}: gradient features need a checkpoint or another model source (saved "
                          "probabilities have no z, W)")
    return FolderProbabilities(path)


def probabilities_name(path: str | os.PathLike) -> str:
    """How results record a probability source: a model's canonical source string, else the folder's absolute path."""
    from oodseg.models.sources import is_model_source, parse_model_source

    return parse_model_source(path).spec() if is_model_source(path) else str(Path(path).resolve())
