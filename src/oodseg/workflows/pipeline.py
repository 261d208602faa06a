"""The stages of ``oodseg score`` around the model: parallel decoding, device transfer, precision, finishing.

Decoding runs in ``workers`` DataLoader processes (0: inline) that hand uint8 frames to the main
process in dataset order; the main process batches frames of equal size, moves them to the device
(pinned memory and non-blocking copies on CUDA), runs the model and the scores once per batch at the
head's resolution and hands each map, and the logits, to the writer pool (:mod:`oodseg.workflows.workers`):
the writers upsample them to the image size, blur them when asked, take the argmax prediction and write
the files (:func:`write_map`, :func:`write_prediction`), so the main process does little besides the forward. ``precision`` chooses the forward's autocast:
``fp32`` (default), ``bf16``, ``fp16`` or ``auto`` (CUDA: bf16 where supported, else fp16; CPU: fp32).
Reduced precision is allowed only for scores computed from the logits alone (:data:`REDUCED_PRECISION_NEEDS`):
feature-norm and gradient scores (``feature_norm``, ``n_*``, ``pgn``, ``mahalanobis``) amplify rounding
of the features, and ODIN's input perturbation (ε ≈ 0.0014) is below bf16's resolution near 1 (2⁻⁸).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from oodseg.conventions import resize_logits, resize_map
from oodseg.data.io import write_score
from oodseg.errors import OodsegError, check_choice
from oodseg.scores.postprocess import gaussian_blur
from oodseg.workflows.workers import write_png

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: What a score may read for it to be computed from an autocast forward (its inputs cast back to float32).
REDUCED_PRECISION_NEEDS = frozenset({"logits", "ood_logits"})
#: Frames each decoding worker prepares ahead (DataLoader ``prefetch_factor``): bounds the decoded frames in memory.
PREFETCH = 2


class _DecodedFrames(torch.utils.data.Dataset):
    """``dataset[fids[i]]`` as ``(fid, uint8 (H, W, 3) tensor)``, or ``(fid, error line)`` when it cannot be read
    (a worker's exception would reach the caller as a multi-line traceback)."""

    def __init__(self, dataset, fids: Sequence[str]):
        self.dataset, self.fids = dataset, list(fids)

    def __len__(self) -> int:
        return len(self.fids)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        fid = self.fids[index]
        try:
            return fid, torch.from_numpy(np.require(self.dataset[fid].image, np.uint8, ["C", "W"]))
        except OodsegError as exc:
            return fid, str(exc)


def decoded_frames(dataset, fids: Sequence[str], workers: int, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """``(fid, uint8 (H, W, 3))`` for ``fids`` in order, decoded by ``workers`` processes (0: inline);
    pinned when ``device`` is CUDA. A frame that cannot be read raises its one-line OodsegError."""
    loader = torch.utils.data.DataLoader(_DecodedFrames(dataset, fids), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=PREFETCH if workers else None)
    for fid, image in loader:
        if isinstance(image, str):
            raise OodsegError(image)
        yield fid, image


def to_model_input(frames: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """uint8 frames ``(H, W, 3)`` of one size → float32 ``(B, 3, H, W)`` in [0, 1] on ``device``
    (as :func:`oodseg.conventions.image_to_tensor`); CUDA: a non-blocking copy, channels-last."""
    cuda = device.type == "cuda"
    batch = torch.stack(list(frames))
    if cuda:
        batch = batch.pin_memory() if not batch.is_pinned() else batch
    batch = batch.to(device, non_blocking=cuda).permute(0, 3, 1, 2).float().div_(255.0)
    return batch.contiguous(memory_format=torch.channels_last if cuda else torch.contiguous_format)


def autocast_dtype(precision: str, device: torch.device, scorers: Sequence = ()) -> torch.dtype | None:
    """The autocast dtype of the shared forward (None: float32) for ``precision`` on ``device``.

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on other CUDA devices, float32 on CPU
    and whenever a score in ``scorers`` needs more than :data:`REDUCED_PRECISION_NEEDS`; asking
    ``bf16``/``fp16`` explicitly for such a score is an error naming it.
    """
    check_choice("precision", precision, PRECISIONS)
    exact = [s.key for s in scorers if not s.needs <= REDUCED_PRECISION_NEEDS]
    if precision == "fp32" or (precision == "auto" and (device.type != "cuda" or exact)):
        return None
    if exact:
        raise OodsegError(f"precision: {precision} is only for scores computed from the logits; "
                          f"{', '.join(exact)} need fp32 (their features, gradients or input perturbations "
                          "are below reduced precision's resolution)")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """CUDA: channels-last weights (the convolutions' fast layout); CPU: unchanged."""
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


# -- finishing, off the critical path: the writer processes upsample, blur and write ---------------
def finish_maps(maps: torch.Tensor, size: tuple[int, int], align_corners: bool,
                smooth: dict[str, Any] | None = None) -> torch.Tensor:
    """(B, h, w) maps at the head's resolution → float32 (B, H, W) at the image size (bilinear, the model's
    ``align_corners``), Gaussian-blurred when ``smooth`` is given (:func:`oodseg.scores.postprocess.gaussian_blur`)."""
    maps = resize_map(maps.float(), size, align_corners)
    return gaussian_blur(maps, **smooth) if smooth is not None else maps


def predict(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """uint8 (B, H, W) argmax of the (B, C, h, w) logits upsampled to ``size`` (the first class of a tie, as
    ``argmax``); computed channels-last, where the reduction over classes is contiguous (~5× faster on CPU)."""
    logits = logits.float().contiguous(memory_format=torch.channels_last)
    return resize_logits(logits, size, align_corners).argmax(dim=1).to(torch.uint8)


def write_map(path: str | os.PathLike, head_map: np.ndarray, size: tuple[int, int], align_corners: bool,
              smooth: dict[str, Any] | None, dtype: str, compression: str) -> None:
    """Writer job: one (h, w) map finished (:func:`finish_maps`) and written as a score file (``write_score``)."""
    finished = finish_maps(torch.from_numpy(head_map)[None], size, align_corners, smooth)[0]
    write_score(path, finished.numpy(), dtype=dtype, compression=compression)


def write_prediction(path: str | os.PathLike, head_logits: np.ndarray, size: tuple[int, int],
                     align_corners: bool) -> None:
    """Writer job: the argmax prediction (:func:`predict`) of one frame's (C, h, w) logits, as a PNG."""
    write_png(path, predict(torch.from_numpy(head_logits)[None], size, align_corners)[0].numpy())
