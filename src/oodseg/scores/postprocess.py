"""Post-processing of finished anomaly maps, as some papers apply it at test time (SPEC §8).

``gaussian_blur`` is RPL's (Liu et al., ICCV 2023, ``yyliu01/RPL`` ``rpl.code/valid.py``), which calls
``torchvision.transforms.GaussianBlur(7, sigma=1)``: a normalised separable Gaussian sampled at the
integer offsets ``-(k-1)/2 … (k-1)/2``, **reflect** padding of ``(k-1)/2`` (the edge pixel is not
repeated), applied to the full-resolution map.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from oodseg.errors import OodsegError


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(k,) normalised ``exp(-x²/(2σ²))`` at ``x = -(k-1)/2 … (k-1)/2``."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(maps: torch.Tensor, kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """(B, H, W) maps blurred by a separable ``kernel_size`` Gaussian of ``sigma`` px, reflect padding.

    Needs ``H, W > (kernel_size - 1) / 2`` (reflect padding cannot reach further than the map).
    """
    check_smooth({"kernel_size": kernel_size, "sigma": sigma})
    if maps.dim() != 3:
        raise OodsegError(f"smooth: expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    pad = (kernel_size - 1) // 2
    if min(maps.shape[-2:]) <= pad:
        raise OodsegError(f"smooth: a {kernel_size}×{kernel_size} blur with reflect padding needs maps larger than "
                          f"{pad} px, got {tuple(maps.shape[-2:])}")
    kernel = gaussian_kernel1d(kernel_size, sigma, maps.dtype).to(maps.device)
    x = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]


def check_smooth(smooth: Any) -> dict[str, Any] | None:
    """``smooth`` as ``{"kernel_size": odd int ≥ 3, "sigma": float > 0}`` (None: no smoothing); OodsegError otherwise."""
    if smooth is None:
        return None
    if not isinstance(smooth, dict) or set(smooth) != {"kernel_size", "sigma"}:
        raise OodsegError(f"smooth: expected {{'kernel_size': K, 'sigma': S}}, got {smooth!r}")
    size, sigma = smooth["kernel_size"], smooth["sigma"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise OodsegError(f"smooth: kernel_size must be an odd integer >= 3, got {size!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        raise OodsegError(f"smooth: sigma must be a positive number, got {sigma!r}")
    return {"kernel_size": int(size), "sigma": float(sigma)}
