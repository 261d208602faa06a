"""Outlier proxy data: an outlier pool, pasting outlier objects into inlier images, mixing outlier images.

A pool is a folder with ``images/{id}.png|jpg|…`` and ``masks/{id}{suffix}.png`` (binary object
masks, 0/1 or 0/255), e.g. SynthStreet's ``outliers/`` or a COCO subset. Pasted pixels are
labelled :data:`OUTLIER` (254) exactly where the (rescaled) object mask lands; a mixed-in
outlier image is labelled 254 on its object mask and 255 (ignored) elsewhere. Every random
choice comes from a numpy ``Generator`` (per sample: seeded by the sample's seed), so pasting
is reproducible and independent of how a batch is split across ranks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oodseg.conventions import OUTLIER, VOID, image_to_tensor
from oodseg.errors import OodsegError

#: mask value -> label for the folder reader: 0 background, 1 or 255 object
MASK_VALUES = "0:0,1:1,255:1"


class OutlierPool:
    """Outlier images with binary object masks, read lazily through the ``folder`` dataset reader.

    ``pool[i] -> (image (3,h,w) float32 in [0,1], mask (h,w) bool)``. ``mask_suffix`` is what
    the mask file name adds to the image stem (e.g. ``"_mask"``); masks are PNG, 0/1 or 0/255.
    """

    def __init__(self, root: str | Path, images: str = "images", masks: str = "masks", mask_suffix: str = "") -> None:
        from oodseg.data import open_dataset

        self.root = Path(root)
        for folder in (self.root / images, self.root / masks):
            if not folder.is_dir():
                raise OodsegError(f"{folder}: outlier pool folder not found (expected {images}/ and {masks}/ in {root})")
        try:
            self.dataset = open_dataset("folder", self.root, images=images, masks=masks, mapping=MASK_VALUES,
                                        mask_suffix=mask_suffix, labels="required")
        except OodsegError as exc:
            raise OodsegError(f"outlier pool {root}: {exc}") from None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[index]
        if sample.label.shape != sample.image.shape[:2]:
            raise OodsegError(f"{sample.image_path}: outlier mask shape {sample.label.shape} differs from "
                              f"the image's {sample.image.shape[:2]}")
        mask = sample.label == 1
        if not mask.any():
            raise OodsegError(f"{sample.image_path}: outlier mask is empty")
        return image_to_tensor(sample.image), torch.from_numpy(mask)


def _resize(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize ``(3,h,w)`` image (bilinear) and ``(h,w)`` bool mask (nearest) to ``size``."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0] > 0.5
    return image, mask


def paste_object(image: torch.Tensor, label: torch.Tensor, obj_image: torch.Tensor, obj_mask: torch.Tensor,
                 rng: np.random.Generator, size_range: tuple[float, float] = (0.1, 0.4)) -> None:
    """Paste one outlier object into ``image`` (3,H,W) and set ``label`` (H,W) to 254 on it, in place.

    The object (the bounding box of ``obj_mask``) is rescaled so its longer side is a fraction
    U(``size_range``) of the image's shorter side and placed at a uniform random position fully
    inside the image; image pixels are replaced and labels set to 254 exactly on the rescaled mask.
    """
    rows, cols = torch.nonzero(obj_mask.any(1)).ravel(), torch.nonzero(obj_mask.any(0)).ravel()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    obj_image, obj_mask = obj_image[:, top:bottom, left:right], obj_mask[top:bottom, left:right]
    height, width = label.shape
    longest = float(rng.uniform(*size_range)) * min(height, width)
    factor = longest / max(bottom - top, right - left)
    size = (max(1, min(height, round((bottom - top) * factor))), max(1, min(width, round((right - left) * factor))))
    obj_image, obj_mask = _resize(obj_image, obj_mask, size)
    y = int(rng.integers(0, height - size[0] + 1))
    x = int(rng.integers(0, width - size[1] + 1))
    region = (slice(None), slice(y, y + size[0]), slice(x, x + size[1]))
    image[region] = torch.where(obj_mask, obj_image, image[region])
    label[region[1:]] = torch.where(obj_mask, torch.full_like(label[region[1:]], OUTLIER), label[region[1:]])


def outlier_scene(obj_image: torch.Tensor, obj_mask: torch.Tensor, size: tuple[int, int],
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole outlier image as a training sample of ``size`` (h, w): the largest window of that
    aspect ratio at a random position, resized, randomly flipped; label 254 on the object mask,
    255 elsewhere."""
    _, height, width = obj_image.shape
    scale = min(height / size[0], width / size[1])
    win_h, win_w = max(1, int(size[0] * scale)), max(1, int(size[1] * scale))
    y, x = int(rng.integers(0, height - win_h + 1)), int(rng.integers(0, width - win_w + 1))
    image, mask = _resize(obj_image[:, y:y + win_h, x:x + win_w], obj_mask[y:y + win_h, x:x + win_w], size)
    if rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    label = torch.full(mask.shape, VOID, dtype=torch.long)
    label[mask] = OUTLIER
    return image, label


def add_outliers(data: dict, pool: OutlierPool, mode: str = "paste", rate: float = 1.0,
                 size_range: tuple[float, float] = (0.1, 0.4)) -> dict:
    """Apply the outlier data recipe to a batch ``{"image": (B,3,h,w), "label": (B,h,w), "seed": (B,)}``.

    ``mode="paste"``: each sample gets one pasted object with probability ``rate``;
    ``mode="mix"``: each sample is replaced by an :func:`outlier_scene` with probability ``rate``
    (the paper's 1 outlier per 10 inlier images is ``rate=1/11``). Sample i draws from
    ``default_rng([seed_i, 254])``. Returns a new dict (inputs are not modified).
    """
    if mode not in ("paste", "mix"):
        raise OodsegError(f"outlier mode: must be paste or mix, got {mode!r}")
    images, labels = data["image"].clone(), data["label"].clone()
    for i, seed in enumerate(data["seed"].tolist()):
        rng = np.random.default_rng([int(seed), OUTLIER])
        if rng.random() >= rate:
            continue
        obj_image, obj_mask = pool[int(rng.integers(len(pool)))]
        if mode == "paste":
            image, label = images[i].cpu(), labels[i].cpu()
            paste_object(image, label, obj_image, obj_mask, rng, size_range)
        else:
            image, label = outlier_scene(obj_image, obj_mask, tuple(labels.shape[-2:]), rng)
        images[i], labels[i] = image.to(images.device), label.to(labels.device)
    return {**data, "image": images, "label": labels}
