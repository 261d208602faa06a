"""Reading image and label files into numpy arrays with one-line errors on bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from oodseg.errors import OodsegError

#: Suffixes recognised as images when a layout does not fix one.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise OodsegError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OodsegError(f"{path}: unreadable {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image file as uint8 ``(H, W, 3)``."""
    img = _open(Path(path), "image")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_raw_label(path: str | Path) -> np.ndarray:
    """A single-channel label file as stored (uint8, or wider for 16-bit PNGs), ``(H, W)``.

    Palette PNGs give their indices, 1-bit PNGs 0/1. Colour label files are refused.
    """
    img = _open(Path(path), "label")
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise OodsegError(f"{path}: label must be a single-channel image, got mode {img.mode}")
    raw = np.asarray(img)
    return raw.astype(np.uint8) if raw.dtype == bool else raw
