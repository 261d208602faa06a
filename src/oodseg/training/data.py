"""Where a run's training data lives: the Cityscapes-layout splits of a data root and their class weights."""
from __future__ import annotations

from pathlib import Path

import torch

from oodseg.errors import OodsegError
from oodseg.training.config import TrainConfig


def resolve_data_root(data: str) -> tuple[Path, Path | None]:
    """(Cityscapes-layout root, default outlier pool or None) for a SynthStreet or Cityscapes root."""
    root = Path(data)
    if not root.is_dir():
        raise OodsegError(f"data: {root} is not a folder")
    if (root / "cityscapes").is_dir():  # a SynthStreet root (oodseg synth --out DIR)
        pool = root / "outliers"
        return root / "cityscapes", pool if pool.is_dir() else None
    return root, None


def open_split(root: Path, split: str, required: bool):
    """The Cityscapes ``split`` under ``root`` (None when absent and not ``required``)."""
    from oodseg.data import open_dataset

    if not (root / "leftImg8bit" / split).is_dir():
        if required:
            raise OodsegError(f"data: {root} has no leftImg8bit/{split}/ (expected a Cityscapes or SynthStreet root)")
        return None
    dataset = open_dataset("cityscapes", root, split=split)
    if required and len(dataset) == 0:
        raise OodsegError(f"data: {root}/leftImg8bit/{split} holds no images")
    return dataset


def training_class_weights(config: TrainConfig, power: float) -> torch.Tensor | None:
    """(num_classes,) inverse-frequency CE weights ``f_c^-power`` of the training split of
    ``config.data`` (:func:`oodseg.training.losses.inverse_frequency_weights`), or None for ``power = 0``."""
    from oodseg.data.labels import class_frequencies
    from oodseg.training.losses import inverse_frequency_weights

    if not 0.0 <= float(power) <= 2.0:
        raise OodsegError(f"recipe {config.recipe}: class_weight_power must be in [0, 2], got {power}")
    if power == 0:
        return None
    train_data = open_split(resolve_data_root(config.data)[0], "train", required=True)
    return inverse_frequency_weights(class_frequencies(train_data, config.num_classes), power)
