"""The optional C kernel ``_summary.c``: every per-pixel softmax quantity of a logit map in one pass.

``pip install -e .`` compiles it (``setup.py``; skipped without a C compiler). When it is built,
:class:`~oodseg.scores.shared.ScoreInputs` uses it for float32 CPU logits, and the torch code
(the path for CUDA and for logits that need gradients) for everything else; both give the same
maps to float32 rounding. The kernel runs on one thread.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util

import torch

_INT = ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None when it was not built."""
    spec = importlib.util.find_spec(f"{__package__}._summary")
    if spec is None or not spec.origin:
        return None
    lib = ctypes.CDLL(spec.origin)
    lib.oodseg_softmax_summary.restype = ctypes.c_int
    lib.oodseg_softmax_summary.argtypes = [ctypes.c_void_p, _INT, _INT, _INT, _INT, _INT, ctypes.c_float] + [
        ctypes.c_void_p] * 6
    return lib


def usable(logits: torch.Tensor) -> bool:
    """True when the kernel is built and ``logits`` (B, C, h, w) are float32 on the CPU without autograd."""
    return (logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad
            and library() is not None)


def softmax_summary(logits: torch.Tensor, temperature: float, *, extremes: bool, mixture: bool
                    ) -> dict[str, torch.Tensor]:
    """Per-pixel maps (B, h, w) of finite ``logits`` (B, C, h, w), for ``q = softmax(l / T)``.

    Always ``exp_sum`` (``Σ exp((l - m)/T)``, ``m`` the max logit) and ``entropy`` (``-Σ q log q``);
    with ``extremes`` also ``max_logit``, ``argmax`` (int64, first maximal class) and
    ``second_logit`` (equal to the max on ties); with ``mixture`` also ``mixture_entropy``
    (``-Σ M log M``, ``M = (1/C + q)/2``).
    """
    if logits.stride(3) != 1 or logits.stride(2) != logits.shape[3]:
        logits = logits.contiguous()  # each class's pixels must be contiguous; a row tile already is
    batch, classes, height, width = logits.shape
    names = ["max_logit", "argmax", "second_logit"] if extremes else []
    names += ["exp_sum", "entropy"] + (["mixture_entropy"] if mixture else [])
    maps = {name: torch.empty(batch, height, width, dtype=torch.int64 if name == "argmax" else torch.float32)
            for name in names}
    pointers = [maps[name].data_ptr() if name in maps else None
                for name in ("max_logit", "argmax", "second_logit", "exp_sum", "entropy", "mixture_entropy")]
    status = library().oodseg_softmax_summary(logits.data_ptr(), batch, classes, height * width, logits.stride(0),
                                              logits.stride(1), temperature, *pointers)
    if status != 0:
        raise MemoryError("oodseg softmax summary: out of memory")
    return maps
