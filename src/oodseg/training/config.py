"""The settings of a training run (:class:`TrainConfig`) and how they are assembled (:func:`make_config`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from oodseg.errors import OodsegError
from oodseg.keyvalue import check_keywords
from oodseg.training.recipe import RECIPES, recipe_class


@dataclass
class TrainConfig:
    """Everything a training run needs. Lengths in steps (one optimizer update = one global batch).

    ``steps`` wins over ``epochs``; ``time_budget`` (seconds of training loop) stops a run early
    and still writes the final checkpoint. ``batch_size`` is the global batch (split over ranks).
    ``crop_size`` in pixels (square crops); ``scale_range`` the random rescale before cropping;
    ``class_uniform`` the share of crops placed on a pixel of a class drawn uniformly among the
    frame's classes (:class:`oodseg.data.transforms.TrainAugment`).
    ``amp``: "auto" (bf16 autocast on CUDA, off on CPU), "bf16", "fp16" (with GradScaler) or "off".
    ``cache_mb``: decoded training frames kept in memory per process (small datasets load once).
    ``channels_last``: keep the module and the images in channels-last memory order (faster
    convolutions on CPU; the checkpoint is the same either way).
    """

    recipe: str = "baseline"
    data: str = ""
    out: str = ""
    arch: str = "small"
    arch_params: dict = field(default_factory=dict)
    num_classes: int = 19
    init: str | None = None
    recipe_params: dict = field(default_factory=dict)
    outliers: str | None = None
    outlier_mask_suffix: str = ""
    steps: int | None = 1500
    epochs: float | None = None
    time_budget: float | None = None
    batch_size: int = 8
    crop_size: int = 128
    scale_range: tuple[float, float] = (0.75, 1.25)
    hflip: bool = True
    color_jitter: float = 0.2
    class_uniform: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    clip: float | None = 5.0
    bn: str = "train"
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"
    log_every: int = 10
    ckpt_every: int = 250
    num_workers: int = 0
    cache_mb: float = 1024.0
    channels_last: bool = True
    validate: bool = True
    resume: bool = False
    overwrite: bool = False

    def check(self) -> None:
        """Raise :class:`OodsegError` naming the first invalid field."""
        if self.recipe not in RECIPES:
            raise OodsegError(f"recipe: unknown recipe {self.recipe!r} (available: {', '.join(RECIPES)})")
        if not self.data:
            raise OodsegError("data: a training data root is required")
        if not self.out:
            raise OodsegError("out: an output folder is required")
        if self.steps is None and self.epochs is None:
            raise OodsegError("steps/epochs: give one of them")
        if self.steps is not None and self.steps < 1:
            raise OodsegError(f"steps: must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise OodsegError(f"epochs: must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise OodsegError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.crop_size < 8:
            raise OodsegError(f"crop_size: must be >= 8, got {self.crop_size}")
        if not 0.0 <= self.class_uniform <= 1.0:
            raise OodsegError(f"class_uniform: must be a probability in [0, 1], got {self.class_uniform}")
        if self.warmup_steps < 0:
            raise OodsegError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise OodsegError(f"scale_range: need 0 < low <= high, got {self.scale_range}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OodsegError(f"lr: must be a positive number, got {self.lr}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise OodsegError(f"optimizer: must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise OodsegError(f"schedule: must be poly, cosine or constant, got {self.schedule!r}")
        if self.bn not in ("train", "frozen", "sync"):
            raise OodsegError(f"bn: must be train, frozen or sync, got {self.bn!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise OodsegError(f"amp: must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.clip is not None and self.clip <= 0:
            raise OodsegError(f"clip: must be > 0, got {self.clip}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise OodsegError(f"time_budget: must be > 0 seconds, got {self.time_budget}")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise OodsegError("log_every/ckpt_every: must be >= 1")
        check_keywords(f"recipe_params (recipe {self.recipe})", recipe_class(self.recipe), self.recipe_params,
                       closed=True)
        if self.init is None:
            from oodseg.models.registry import get_factory  # lazily: oodseg.models reads checkpoint files

            check_keywords(f"arch_params (architecture {self.arch})", get_factory(self.arch), self.arch_params)


def make_config(recipe: str = "baseline", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the global defaults, then the recipe's defaults, then ``overrides``."""
    defaults = dict(recipe_class(recipe).defaults)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise OodsegError(f"TrainConfig: unknown field(s) {', '.join(unknown)}")
    values = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("epochs") is not None and overrides.get("steps") is None:
        values["steps"] = None  # epochs given alone: they define the length
    return TrainConfig(recipe=recipe, **values)
