"""Tiny on-disk training data for the trainer tests (Cityscapes layout + an outlier pool)."""
from pathlib import Path

import numpy as np
from PIL import Image

#: class -> RGB colour of the tiny scenes (road, building, sky, car)
COLOURS = {0: (128, 64, 128), 2: (70, 70, 70), 10: (70, 130, 180), 13: (0, 0, 142)}
#: SmallSegNet widths that train in milliseconds per step
TINY_ARCH = {"widths": [8, 12, 16], "aspp_channels": 8, "aspp_rates": [1, 2, 3], "low_channels": 8,
             "decoder_channels": 8, "dropout": 0.0}


def _scene(rng: np.random.Generator, height: int, width: int, ignore: bool) -> tuple[np.ndarray, np.ndarray]:
    label = np.full((height, width), 2, dtype=np.uint8)
    label[: height // 3] = 10
    label[2 * height // 3:] = 0
    y, x = rng.integers(height // 3, 2 * height // 3 - 6), rng.integers(0, width - 10)
    label[y:y + 8, x:x + 10] = 13
    image = np.stack([np.array(COLOURS[c], dtype=np.float64) for c in label.ravel()]).reshape(height, width, 3)
    image = np.clip(image + rng.normal(0, 12, size=image.shape), 0, 255).astype(np.uint8)
    if ignore:
        label[:2, :2] = 255
    return image, label


def write_tiny_cityscapes(root: Path, n_train: int = 8, n_val: int = 2, size: tuple[int, int] = (32, 48),
                          ignore: bool = True, outliers: bool = True, seed: int = 0) -> Path:
    """A SynthStreet-like root: ``root/cityscapes/{leftImg8bit,gtFine}/{train,val}/town/...`` and
    ``root/outliers/{images,masks}``. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        images = root / "cityscapes" / "leftImg8bit" / split / "town"
        labels = root / "cityscapes" / "gtFine" / split / "town"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(count):
            image, label = _scene(rng, *size, ignore=ignore)
            Image.fromarray(image).save(images / f"town_{i:04d}_leftImg8bit.png")
            Image.fromarray(label).save(labels / f"town_{i:04d}_gtFine_labelTrainIds.png")
    if outliers:
        (root / "outliers" / "images").mkdir(parents=True)
        (root / "outliers" / "masks").mkdir(parents=True)
        for i in range(3):
            image = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:20, :20]
            mask = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 64).astype(np.uint8)
            Image.fromarray(image).save(root / "outliers" / "images" / f"obj{i}.png")
            Image.fromarray(mask).save(root / "outliers" / "masks" / f"obj{i}.png")
    return root
