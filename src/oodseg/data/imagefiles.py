"""Reading image and label files into numpy arrays with one-line errors on bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from oodseg.errors import OodsegError

#: Suffixes recognised as images when a layout does not fix one.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _open(path: Path, what: str, decode: bool = True) -> Image.Image:
    """The opened file (pixels decoded unless ``decode`` is False: header only); one-line OodsegError if unreadable."""
    if not path.is_file():
        raise OodsegError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        if decode:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OodsegError(f"{path}: unreadable {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from None
    return img


#: Pillow modes holding unsigned 16-bit samples (16-bit grayscale PNG and TIFF)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``.

    8-bit and lower-depth files keep their values (1-, 2- and 4-bit gray scaled to 0..255, palettes
    looked up, alpha dropped). 16-bit samples keep their high byte (``v >> 8``), the rule Pillow applies
    to 16-bit RGB(A) and gray+alpha PNGs, so a 16-bit gray file reads like the same picture in 16-bit
    RGB. Modes without a fixed range (32-bit integer or float TIFF) are refused.
    """
    path = Path(path)
    img = _open(path, "image")
    mode = img.mode
    if mode == "I" and img.format == "PNG":  # older Pillow: 16-bit gray PNG as mode I (PNG samples are <= 16 bits)
        mode = "I;16"
    if mode in _SIXTEEN_BIT_MODES:
        gray = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise OodsegError(f"{path}: {kind} image (mode {mode}) has no defined brightness range; "
                          "save it as an 8- or 16-bit image")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header (no decoding)."""
    with _open(Path(path), "image", decode=False) as img:
        return img.height, img.width


def read_raw_label(path: str | Path) -> np.ndarray:
    """A single-channel label file as stored (uint8, or wider for 16-bit PNGs), ``(H, W)``.

    Palette PNGs give their indices, 1-bit PNGs 0/1. Colour label files are refused.
    """
    img = _open(Path(path), "label")
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise OodsegError(f"{path}: label must be a single-channel image, got mode {img.mode}")
    raw = np.asarray(img)
    return raw.astype(np.uint8) if raw.dtype == bool else raw
