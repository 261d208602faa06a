"""Validation and conversion of metric inputs (score maps, OoD labels, masks).

Every metric accepts numpy arrays or torch tensors of shape ``(H, W)`` or ``(B, H, W)``
and rejects bad input with a one-line :class:`~oodseg.errors.OodsegError`.
"""
from __future__ import annotations

import numpy as np

from oodseg.conventions import ANOMALY, VOID
from oodseg.errors import OodsegError



def to_numpy(x, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a numpy array, without copying when possible."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise OodsegError(f"{name}: cannot convert to an array ({exc})") from None


def as_batch(x, name: str) -> np.ndarray:
    """``x`` of shape (H, W) or (B, H, W) as a (B, H, W) array."""
    arr = to_numpy(x, name)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise OodsegError(f"{name}: expected shape (H, W) or (B, H, W), got {tuple(arr.shape)}")
    return arr


def check_scores(score, name: str = "score", native: bool = False) -> np.ndarray:
    """Finite real-valued scores as float32 (float64 kept), shape (B, H, W); -0.0 becomes +0.0.

    ``native``: keep float16 maps in float16 too (the official SMIYC computation works in the map's dtype).
    """
    arr = as_batch(score, name)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise OodsegError(f"{name}: expected real-valued scores, got dtype {arr.dtype}")
    if arr.dtype != np.float64 and not (native and arr.dtype in (np.float16, np.float32)):
        arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "Inf"
        raise OodsegError(f"{name}: contains {bad} values")
    return arr + arr.dtype.type(0.0)  # turns -0.0 into +0.0 so that both tie


def check_ood_label(label, shape: tuple[int, ...], name: str = "label") -> np.ndarray:
    """OoD label (0 inlier, 1 anomaly, 255 void) as uint8 (B, H, W), matching ``shape``."""
    arr = as_batch(label, name)
    if arr.shape != shape:
        raise OodsegError(f"{name}: shape {tuple(arr.shape)} does not match score shape {tuple(shape)}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.array_equal(arr, np.round(arr)):
            raise OodsegError(f"{name}: expected integer label values 0/1/255, got dtype {arr.dtype}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise OodsegError(f"{name}: unknown label values outside 0/1/255 (min {arr.min()}, max {arr.max()})")
        arr = arr.astype(np.uint8)
    outside = (arr > ANOMALY) & (arr != VOID)
    if outside.any():
        unknown = np.unique(arr[outside]).tolist()
        raise OodsegError(f"{name}: unknown label values {unknown[:5]} (expected 0 inlier, 1 anomaly, 255 void)")
    return arr


def check_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Boolean mask of ``shape`` (B, H, W); a (H, W) mask is broadcast over the batch."""
    arr = to_numpy(mask, name)
    if arr.dtype != np.bool_:
        raise OodsegError(f"{name}: expected a boolean mask, got dtype {arr.dtype}")
    if arr.shape == shape[1:]:
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        raise OodsegError(f"{name}: shape {tuple(arr.shape)} does not match score shape {tuple(shape)}")
    return arr

