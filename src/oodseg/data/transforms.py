"""Training-time transforms for (image, label) pairs as torch tensors, and a torch ``Dataset`` wrapper.

Images are float32 ``(3, H, W)`` in [0, 1]; labels int64 ``(H, W)`` trainIds with 255 = ignore.
Every random choice comes from a numpy ``Generator`` passed in, so a sample's augmentation is
reproducible from its seed alone (independent of worker processes and ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from oodseg.conventions import VOID
from oodseg.errors import OodsegError



def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W)`` -> int64 ``(H, W)``."""
    return torch.tensor(label, dtype=torch.int64)


def check_labels(label: np.ndarray, num_classes: int, where: str) -> None:
    """Raise :class:`OodsegError` unless every value of ``label`` is a trainId < ``num_classes`` or 255."""
    counts = np.bincount(label.ravel(), minlength=256)
    bad = np.flatnonzero(counts[num_classes:VOID])
    if bad.size:
        values = ", ".join(str(int(v) + num_classes) for v in bad[:5])
        raise OodsegError(f"{where}: unknown label value(s) {values} (expected 0..{num_classes - 1} or 255)")


def _window_start(size: int, window: int, rng: np.random.Generator, inside: int | None) -> int:
    """Uniform start of a ``window`` on an axis of ``size`` px; among those containing ``inside`` when given."""
    last = max(size - window, 0)
    if inside is None:
        return int(rng.integers(0, last + 1))
    low, high = max(0, inside - window + 1), min(last, inside)
    return int(rng.integers(low, high + 1)) if low <= high else int(rng.integers(0, last + 1))


def scaled_crop(image: torch.Tensor, label: torch.Tensor, crop_size: int, scale: float,
                rng: np.random.Generator, focus: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``crop_size``² crop of the image rescaled by ``scale`` (pads with 0 / 255 when too small).

    Cuts a ``round(crop_size/scale)``² window at a uniform random position from the original
    and resizes it to ``crop_size`` (bilinear for the image, nearest for the label), which is
    the same as rescaling the whole image first, at a fraction of the cost. ``focus`` = (row,
    column): the window is drawn uniformly among the positions that contain that pixel.
    ``image`` (3, H, W) float in [0, 1] or uint8 (converted after cutting, so only the window
    is); ``label`` (H, W) any integer type. Returns float32 (3, c, c) and int64 (c, c).
    """
    _, height, width = image.shape
    window = max(1, int(round(crop_size / scale)))
    top = _window_start(height, window, rng, None if focus is None else focus[0])
    left = _window_start(width, window, rng, None if focus is None else focus[1])
    img = image[:, top:top + window, left:left + window]
    if img.dtype == torch.uint8:
        img = img.float().div_(255.0)
    lab = label[top:top + window, left:left + window].long()
    pad_h, pad_w = window - img.shape[1], window - img.shape[2]
    if pad_h or pad_w:
        img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)
        lab = F.pad(lab, (0, pad_w, 0, pad_h), value=VOID)
    if window != crop_size:
        img = F.interpolate(img[None], size=(crop_size, crop_size), mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(lab[None, None].float(), size=(crop_size, crop_size), mode="nearest-exact")[0, 0].long()
    return img.contiguous(), lab.contiguous()


def jitter_colours(image: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation, each a factor in ``[1-strength, 1+strength]``."""
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    out = image * float(brightness)
    mean = out.mean()
    out = (out - mean) * float(contrast) + mean
    gray = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2])[None]
    out = gray + (out - gray) * float(saturation)
    return out.clamp_(0.0, 1.0)


def class_uniform_pixel(label: torch.Tensor, rng: np.random.Generator) -> tuple[int, int] | None:
    """(row, column) of a random pixel of a class drawn uniformly among the classes in ``label``
    (255 excluded); None when every pixel is 255. Rare classes are picked as often as common ones."""
    flat = label.reshape(-1)
    counts = torch.bincount(flat, minlength=VOID + 1)  # (sorted like torch.unique, ~20× faster)
    counts[VOID] = 0
    classes = torch.nonzero(counts).reshape(-1)
    if classes.numel() == 0:
        return None
    chosen = int(classes[int(rng.integers(classes.numel()))])
    pixels = torch.nonzero(flat == chosen).reshape(-1)
    index = int(pixels[int(rng.integers(pixels.numel()))])
    return divmod(index, label.shape[1])


@dataclass
class TrainAugment:
    """Random rescale (uniform in ``scale_range``) + square crop, horizontal flip, colour jitter.

    ``class_uniform``: probability that a crop is centred on (contains) a pixel of a class drawn
    uniformly among the frame's classes (:func:`class_uniform_pixel`) instead of a uniform
    position; 0 keeps uniform crops only.
    """

    crop_size: int
    scale_range: tuple[float, float] = (0.75, 1.25)
    hflip: bool = True
    color_jitter: float = 0.2
    class_uniform: float = 0.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(3,H,W)`` float in [0, 1] or uint8, ``(H,W)`` integer -> float32 ``(3,c,c)``, int64 ``(c,c)``
        with c = ``crop_size``."""
        scale = float(rng.uniform(*self.scale_range))
        focus = None
        if self.class_uniform > 0 and rng.random() < self.class_uniform:
            focus = class_uniform_pixel(label, rng)
        image, label = scaled_crop(image, label, self.crop_size, scale, rng, focus)
        if self.hflip and rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if self.color_jitter > 0:
            image = jitter_colours(image, self.color_jitter, rng)
        return image, label


class SegmentationTrainSet(torch.utils.data.Dataset):
    """Torch view of an :func:`oodseg.data.open_dataset` dataset with augmentation.

    Indexed by ``(index, seed)`` pairs (see ``oodseg.workflows.train``): the seed drives the
    augmentation. Items are ``{"image": (3,c,c) float32, "label": (c,c) int64, "seed": int}``.
    Decoded, checked frames are kept in memory up to ``cache_mb`` MiB (per process), so small
    datasets are read from disk once.
    """

    def __init__(self, dataset, augment: TrainAugment, num_classes: int, cache_mb: float = 0) -> None:
        if len(dataset) == 0:
            raise OodsegError(f"{dataset.root}: no training images found")
        self.dataset, self.augment, self.num_classes = dataset, augment, num_classes
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H,W,3), label uint8 (H,W)) of frame ``index``, checked (cached when room is left)."""
        if index in self._cache:
            return self._cache[index]
        sample = self.dataset[index]
        if sample.label is None:
            raise OodsegError(f"{sample.image_path}: no label file for this training image")
        if sample.label.shape != sample.image.shape[:2]:
            raise OodsegError(f"{sample.image_path}: label shape {sample.label.shape} differs from image "
                              f"{sample.image.shape[:2]}")
        check_labels(sample.label, self.num_classes, str(sample.image_path))
        # writable (decoders may return read-only buffers) so torch.from_numpy can view them
        image, label = np.require(sample.image, requirements="W"), np.require(sample.label, requirements="W")
        size = image.nbytes + label.nbytes
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = (image, label)
            self._cached_bytes += size
        return image, label

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        image, label = self.frame(index)
        rng = np.random.default_rng(seed)  # uint8 views of the cached frame: only the crop gets converted
        image, label = self.augment(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label), rng)
        return {"image": image, "label": label, "seed": seed}
