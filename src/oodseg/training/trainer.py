"""One training loop for every OoD-training method; a method is a *recipe* (a loss + a data recipe).

The loop runs in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU), writes
``OUT/log.jsonl`` (every loss term), atomic checkpoints ``OUT/checkpoint/`` (loadable by
:func:`oodseg.models.load_checkpoint`) plus ``OUT/trainer_state.pt`` (step, module,
optimizer, scheduler, RNG states, recipe state) and ``OUT/train.json`` (schema
``oodseg.train``). ``resume=True`` continues exactly where an interrupted run stopped.

Recipe interface (stable; ``training/flow.py`` and ``training/rpl.py`` implement it)::

    class MyRecipe(Recipe):
        name = "my-recipe"
        defaults = {"lr": 1e-4, "steps": 500}   # TrainConfig fields this recipe changes
        def __init__(self, **params): ...        # recipe options (e.g. lam); TrainConfig.recipe_params
        def setup(self, model, config) -> nn.Module
            # build the trainable module (may wrap/freeze ``model``); validate inputs (outlier
            # pool, ...) here: it runs before any training step. ``config.arch`` /
            # ``config.arch_params`` describe ``model`` (resolved from --init or --arch).
        def param_groups(self, module, config) -> list[dict]
            # optimizer groups ``{"params": [...], "lr": float}``; default: all trainable
            # parameters at ``config.lr``
        def batch(self, data, rng) -> dict
            # data recipe. ``data`` = {"image": (B,3,h,w) float32 in [0,1], "label": (B,h,w)
            # int64 trainIds / 255 ignore, "seed": (B,) int64 per-sample seeds} on the training
            # device; ``rng`` a numpy Generator seeded by (seed, step, rank). Use the per-sample
            # seeds for randomness that must not depend on how a batch is split across ranks.
            # Pasted outlier pixels get label 254. Default: identity.
        def loss(self, module, batch) -> tuple[Tensor, dict[str, float]]
            # total loss (scalar, mean over this rank's pixels) and every term for the log.
            # ``module`` may be wrapped in DistributedDataParallel: call it, never reach into
            # attributes (use :func:`unwrap`). Runs under autocast on GPU: cast logits to float.
        def export(self, module) -> tuple[nn.Module, str, dict]
            # (model to save, architecture name, build params) for the checkpoint
        def state_dict(self) -> dict / load_state_dict(state)   # optional extra state (tensors)

Recipes are registered by name with a lazy import (:data:`RECIPES`): ``baseline`` (here),
``entropy-max`` (:mod:`oodseg.training.entropy_max`), ``nflowjs``
(:mod:`oodseg.training.nflowjs`), ``rpl`` (:mod:`oodseg.training.rpl`).

Determinism: the sample order is a seeded permutation per epoch, the augmentation of a
sample is seeded by its position in that stream, and the recipe RNG by (seed, step, rank),
so a resumed run and a run on several ranks (same global batch) see the same data as one
uninterrupted process. DDP averages gradients of per-rank means; this equals the
single-process gradient when every rank has the same number of pixels in each loss term
(true for crops without ignore pixels). Batch norm: ``bn="train"`` (per-rank statistics),
``"frozen"`` (eval-mode statistics, affine parameters still trained; makes DDP match one
process exactly) or ``"sync"`` (SyncBatchNorm under DDP).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from oodseg import distributed as dist_utils
from oodseg.atomic import atomic_path, write_json, write_text
from oodseg.errors import OodsegError
from oodseg.progress import track

IGNORE = 255
OUTLIER = 254

#: recipe name -> "module:Class" (imported on first use)
RECIPES: dict[str, str] = {
    "baseline": "oodseg.training.trainer:BaselineRecipe",
    "entropy-max": "oodseg.training.entropy_max:EntropyMaxRecipe",
    "nflowjs": "oodseg.training.nflowjs:NFlowJSRecipe",
    "rpl": "oodseg.training.rpl:RPLRecipe",
}


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
            raise OodsegError(f"--recipe: unknown recipe {self.recipe!r} (available: {', '.join(RECIPES)})")
        if not self.data:
            raise OodsegError("--data: a training data root is required")
        if not self.out:
            raise OodsegError("--out: an output folder is required")
        if self.steps is None and self.epochs is None:
            raise OodsegError("--steps/--epochs: give one of them")
        if self.steps is not None and self.steps < 1:
            raise OodsegError(f"--steps: must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise OodsegError(f"--epochs: must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise OodsegError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.crop_size < 8:
            raise OodsegError(f"--crop-size: must be >= 8, got {self.crop_size}")
        if not 0.0 <= self.class_uniform <= 1.0:
            raise OodsegError(f"--class-uniform: must be a probability in [0, 1], got {self.class_uniform}")
        if self.warmup_steps < 0:
            raise OodsegError(f"--warmup-steps: must be >= 0, got {self.warmup_steps}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise OodsegError(f"scale_range: need 0 < low <= high, got {self.scale_range}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OodsegError(f"--lr: must be a positive number, got {self.lr}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise OodsegError(f"--optimizer: must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise OodsegError(f"--schedule: must be poly, cosine or constant, got {self.schedule!r}")
        if self.bn not in ("train", "frozen", "sync"):
            raise OodsegError(f"--bn: must be train, frozen or sync, got {self.bn!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise OodsegError(f"--amp: must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.clip is not None and self.clip <= 0:
            raise OodsegError(f"--clip: must be > 0, got {self.clip}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise OodsegError(f"--time-budget: must be > 0 seconds, got {self.time_budget}")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise OodsegError("--log-every/--ckpt-every: must be >= 1")


class Recipe:
    """A training method: a loss + a data recipe (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    #: TrainConfig fields this recipe changes from the global defaults (see :func:`make_config`)
    defaults: ClassVar[dict[str, Any]] = {}
    #: passed to DistributedDataParallel (True when some parameters get no gradient in a step)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        if params:
            raise OodsegError(f"recipe {self.name}: unknown parameter(s) {', '.join(sorted(params))}")

    def setup(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        self.architecture, self.arch_params = config.arch, dict(config.arch_params)
        return model

    def param_groups(self, module: nn.Module, config: TrainConfig) -> list[dict]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": config.lr}]

    def batch(self, data: dict, rng: np.random.Generator) -> dict:
        return data

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def export(self, module: nn.Module) -> tuple[nn.Module, str, dict]:
        return module, self.architecture, self.arch_params

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def segmentation_logits(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float32 logits of ``module`` at the images' resolution (bilinear upsampling)."""
    out = module(images)
    if isinstance(out, dict):
        out = out["logits"] if "logits" in out else out["out"]
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out.float()


def head_logits(module: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) float32 logits at the resolution of the classifier conv ``head`` (inside ``module``).

    ``module(images)`` runs as usual (so a DDP wrapper sees the forward pass); a forward hook on
    ``head`` keeps its output, and the network's own upsampling of it is left unused.
    """
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        module(images)
    finally:
        handle.remove()
    if not captured:
        raise OodsegError("the classifier head did not run in the forward pass")
    return captured[-1].float()


def labels_at(labels: torch.Tensor, size: tuple[int, int], mode: str = "nearest-exact") -> torch.Tensor:
    """(B, H, W) integer labels resampled to (B, h, w) int64 without mixing values: with
    ``"nearest-exact"`` cell ``i`` takes row ``floor((i + 0.5) * H / h)``, the label under the cell
    centre; ``"nearest"`` takes row ``floor(i * H / h)`` (the cell's first pixel)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode=mode)[:, 0].long()


def rank_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over the DDP ranks, ``value`` itself in one process (the loss divisor that
    makes DDP's gradient average exact)."""
    return dist_utils.all_reduce_sum(value.clone()) / dist_utils.world_size()


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


class BaselineRecipe(Recipe):
    """Closed-set training: pixel-wise cross entropy over the trainIds (255 and 254 ignored).

    ``class_weight_power`` > 0 weights each pixel's CE by ``f_y^-power`` (``f`` the class's share
    of the training pixels, counted once before training; weights scaled so the average pixel
    keeps weight 1, :func:`oodseg.training.losses.inverse_frequency_weights`); 0 is unweighted.
    ``hard_fraction`` < 1 averages the CE over only that fraction of hardest pixels of each
    (per-rank) batch (:func:`oodseg.training.losses.bootstrapped_cross_entropy`); 1 is all pixels.
    ``head_resolution`` computes the CE on the classifier's own output (stride 4 for the built-in
    networks; :func:`head_logits`) against the labels at its cell centres (:func:`labels_at`)
    instead of on logits upsampled to the crop: a 16th of the pixels and no upsampling in the
    backward pass, for the same val mIoU per step on SynthStreet (README "Baseline training").
    Logged terms: ``ce`` (plain mean CE) and ``weighted_ce`` (the loss) when it differs from ``ce``.
    """

    name = "baseline"
    #: chosen by measurement on default SynthStreet (small model, README "Baseline training"):
    #: class-uniform crops and lr 5e-3 with a 50-step warm-up beat uniform crops at lr 2e-3;
    #: plain CE beat hard_fraction 0.25; the head-resolution loss buys steps at the same accuracy
    defaults = {"class_uniform": 0.5, "lr": 5e-3, "warmup_steps": 50, "batch_size": 16}

    def __init__(self, hard_fraction: float = 1.0, class_weight_power: float = 0.5,
                 head_resolution: bool = True) -> None:
        super().__init__()
        if not 0.0 < float(hard_fraction) <= 1.0:
            raise OodsegError(f"recipe baseline: hard_fraction must be in (0, 1], got {hard_fraction}")
        if not isinstance(head_resolution, bool):
            raise OodsegError(f"recipe baseline: head_resolution must be true or false, got {head_resolution!r}")
        self.hard_fraction = float(hard_fraction)
        self.class_weight_power = float(class_weight_power)
        self.head_resolution = head_resolution
        self.class_weights: torch.Tensor | None = None
        self.head: nn.Module | None = None

    def setup(self, model, config):
        from oodseg.adapter import ModelAdapter

        self.class_weights = training_class_weights(config, self.class_weight_power)
        if self.head_resolution:
            try:
                with ModelAdapter(model) as adapter:  # finds the final 1×1 classifier conv
                    self.head = adapter.head
            except OodsegError as exc:
                raise OodsegError(f"recipe baseline: {exc} (or pass -p head_resolution=false)") from exc
        return super().setup(model, config)

    def loss(self, module, batch):
        from oodseg.training.losses import bootstrapped_cross_entropy

        if self.head is not None:
            logits = head_logits(module, self.head, batch["image"])
            labels = labels_at(batch["label"], logits.shape[-2:])
        else:
            logits, labels = segmentation_logits(module, batch["image"]), batch["label"]
        loss, ce = bootstrapped_cross_entropy(logits, labels, self.hard_fraction, self.class_weights,
                                              normalizer=rank_mean)
        terms = {"ce": float(ce.detach())}
        if self.hard_fraction < 1.0 or self.class_weights is not None:
            terms["weighted_ce"] = float(loss.detach())
        return loss, terms


def get_recipe(name: str, **params: Any) -> Recipe:
    """Instantiate the recipe registered as ``name`` with its options ``params``."""
    if name not in RECIPES:
        raise OodsegError(f"--recipe: unknown recipe {name!r} (available: {', '.join(RECIPES)})")
    module_name, cls_name = RECIPES[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise OodsegError(f"--recipe: {name} is not available in this installation ({exc})") from exc
    return cls(**params)


def make_config(recipe: str = "baseline", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the global defaults, then the recipe's defaults, then ``overrides``."""
    if recipe not in RECIPES:
        raise OodsegError(f"--recipe: unknown recipe {recipe!r} (available: {', '.join(RECIPES)})")
    module_name, cls_name = RECIPES[recipe].split(":")
    try:
        defaults = dict(getattr(importlib.import_module(module_name), cls_name).defaults)
    except (ImportError, AttributeError) as exc:
        raise OodsegError(f"--recipe: {recipe} is not available in this installation ({exc})") from exc
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise OodsegError(f"TrainConfig: unknown field(s) {', '.join(unknown)}")
    values = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("epochs") is not None and overrides.get("steps") is None:
        values["steps"] = None  # epochs given alone: they define the length
    return TrainConfig(recipe=recipe, **values)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# --- data order ----------------------------------------------------------------------------------

def sample_seed(seed: int, position: int) -> int:
    """Seed of the sample at ``position`` in the training stream (drives its augmentation and outliers)."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class StepBatchSampler(torch.utils.data.Sampler):
    """This rank's share of the global batches for steps ``start_step..total_steps-1``.

    The stream is the concatenation of seeded permutations of ``range(num_items)`` (one per
    epoch); global batch ``s`` is stream positions ``[s·B, (s+1)·B)``, split rank-strided.
    Yields lists of ``(index, sample seed)`` pairs for :class:`SegmentationTrainSet`.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.total_steps, self.rank, self.world_size = start_step, total_steps, rank, world_size
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _index(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return int(self._perm[position % self.num_items])

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            positions = range(step * self.batch_size, (step + 1) * self.batch_size)[self.rank::self.world_size]
            yield [(self._index(p), sample_seed(self.seed, p)) for p in positions]


# --- optimisation ---------------------------------------------------------------------------------

def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (Nesterov-free momentum) over ``groups`` with ``config.weight_decay``."""
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise OodsegError(f"recipe {config.recipe}: no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then poly ``(1-t)^power``, cosine or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    if config.schedule == "poly":
        return (1.0 - t) ** config.poly_power
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def set_batchnorm_mode(module: nn.Module, bn: str) -> None:
    """Put batch-norm layers in eval mode when ``bn == "frozen"`` (call after ``module.train()``)."""
    if bn == "frozen":
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


# --- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def validation_miou(model: nn.Module, dataset, num_classes: int, device: torch.device) -> float:
    """mIoU (:class:`oodseg.metrics.SegmentationMetrics`) of ``model`` on ``dataset`` at full resolution;
    frames sharded over ranks, the confusion matrix summed over all of them."""
    from oodseg.data.transforms import check_labels, image_to_tensor
    from oodseg.metrics import SegmentationMetrics

    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    for index in track(dist_utils.shard(range(len(dataset))), "validate"):
        sample = dataset[index]
        check_labels(sample.label, num_classes, str(sample.image_path))
        logits = segmentation_logits(model, image_to_tensor(sample.image)[None].to(device))
        metrics.update(logits.argmax(1).cpu().numpy(), sample.label[None])
    model.train(was_training)
    metrics.all_reduce()
    return metrics.compute()["mIoU"]


# --- the loop -------------------------------------------------------------------------------------

STATE_FILE = "trainer_state.pt"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "train.json"
CHECKPOINT_DIR = "checkpoint"
#: config fields a resumed run must share with the interrupted one
RESUME_FIELDS = ("recipe", "arch", "arch_params", "num_classes", "batch_size", "crop_size", "seed", "optimizer",
                 "recipe_params")


def resolve_data_root(data: str) -> tuple[Path, Path | None]:
    """(Cityscapes-layout root, default outlier pool or None) for a SynthStreet or Cityscapes root."""
    root = Path(data)
    if not root.is_dir():
        raise OodsegError(f"--data: {root} is not a folder")
    if (root / "cityscapes").is_dir():  # a SynthStreet root (oodseg synth --out DIR)
        pool = root / "outliers"
        return root / "cityscapes", pool if pool.is_dir() else None
    return root, None


def open_split(root: Path, split: str, required: bool):
    """The Cityscapes ``split`` under ``root`` (None when absent and not ``required``)."""
    from oodseg.data import open_dataset

    if not (root / "leftImg8bit" / split).is_dir():
        if required:
            raise OodsegError(f"--data: {root} has no leftImg8bit/{split}/ (expected a Cityscapes or SynthStreet root)")
        return None
    dataset = open_dataset("cityscapes", root, split=split)
    if required and len(dataset) == 0:
        raise OodsegError(f"--data: {root}/leftImg8bit/{split} holds no images")
    return dataset


def initial_model(config: TrainConfig) -> tuple[nn.Module, str, dict]:
    """(model, architecture, params): from ``config.init`` (checked for a 1×1 head) or built fresh."""
    from oodseg.models import build_model, load_checkpoint

    if config.init:
        from oodseg.adapter import ModelAdapter

        model, meta = load_checkpoint(config.init)
        if meta["num_classes"] != config.num_classes:
            raise OodsegError(f"--init: {config.init} has {meta['num_classes']} classes, the data {config.num_classes}")
        ModelAdapter(model).close()  # raises OodsegError when no final 1×1 classifier conv is found
        return model, meta["architecture"], dict(meta["params"])
    params = {**config.arch_params, "num_classes": config.num_classes}
    return build_model(config.arch, **params), config.arch, params


def _prepare_output(out: Path, config: TrainConfig) -> None:
    if config.resume:
        if not (out / STATE_FILE).is_file():
            raise OodsegError(f"--resume: {out / STATE_FILE} not found (nothing to resume)")
    elif (out / STATE_FILE).exists() or (out / SUMMARY_FILE).exists():
        if not config.overwrite:
            raise OodsegError(f"--out: {out} holds a previous run; pass --resume to continue it or --overwrite")


def _load_state(path: Path, config: TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise OodsegError(f"{path}: corrupt trainer state ({str(exc).splitlines()[0]})") from exc
    saved = json.loads(state["config"])
    for name in RESUME_FIELDS:
        now = json.loads(json.dumps(getattr(config, name)))
        if saved.get(name) != now:
            raise OodsegError(f"--resume: {name} was {saved.get(name)!r} in the interrupted run, now {now!r}")
    return state


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by an interrupted run past its last trainer state)."""
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        write_text(path, "".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= step))


def _autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` (bf16 on CUDA for "auto"; a no-op context when off)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _save(out: Path, step: int, recipe: Recipe, module: nn.Module, optimizer, scheduler, scaler,
          config: TrainConfig) -> None:
    """Write the exported checkpoint, then the trainer state (rank 0; both atomic)."""
    from oodseg.models import save_checkpoint

    model, architecture, params = recipe.export(module)
    save_checkpoint(model, out / CHECKPOINT_DIR, architecture, params, recipe=recipe.name, step=step)
    state = {"step": step, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
             "recipe": recipe.state_dict(), "config": json.dumps(dataclasses.asdict(config))}
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(state, tmp)


def train(config: TrainConfig, callback: Callable[[int, dict], None] | None = None) -> dict:
    """Run ``config.recipe`` and return the ``oodseg.train`` summary (also written to ``OUT/train.json``).

    Every input is checked before the first step. ``callback(step, log_record)`` is called after
    each logged step (on every rank). Under ``torchrun`` each rank takes a rank-strided share of
    every global batch; rank 0 writes all files.
    """
    from oodseg.data.transforms import SegmentationTrainSet, TrainAugment

    config.check()
    recipe = get_recipe(config.recipe, **config.recipe_params)
    distributed = dist_utils.init()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if config.batch_size % world:
        raise OodsegError(f"--batch-size: {config.batch_size} is not divisible by the {world} processes")
    device = torch.device(config.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(config.out)
    _prepare_output(out, config)

    data_root, default_pool = resolve_data_root(config.data)
    train_data = open_split(data_root, "train", required=True)
    val_data = open_split(data_root, "val", required=False) if config.validate else None
    if config.outliers is None and default_pool is not None:
        config = dataclasses.replace(config, outliers=str(default_pool))
    torch.manual_seed(config.seed)  # same initial weights on every rank and in every run
    model, architecture, params = initial_model(config)
    config = dataclasses.replace(config, arch=architecture, arch_params=params)
    module = recipe.setup(model, config).to(device)
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if config.bn == "sync" and distributed:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    optimizer = build_optimizer(recipe.param_groups(module, config), config)
    total_steps = config.steps or math.ceil(config.epochs * len(train_data) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" and config.amp == "fp16" else None

    start_step = 0
    if config.resume:
        state = _load_state(out / STATE_FILE, config)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        recipe.load_state_dict(state["recipe"])
        start_step = int(state["step"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            _truncate_log(out / LOG_FILE, start_step)
        else:
            write_text(out / LOG_FILE, "")
    trainable = module
    if distributed:
        trainable = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=recipe.find_unused_parameters)

    augment = TrainAugment(config.crop_size, tuple(config.scale_range), config.hflip, config.color_jitter,
                           config.class_uniform)
    sampler = StepBatchSampler(len(train_data), config.batch_size, config.seed, start_step, total_steps, rank, world)
    train_set = SegmentationTrainSet(train_data, augment, config.num_classes, config.cache_mb)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers)
    params_to_clip = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = _autocast(device, config.amp)
    step, started = start_step, time.perf_counter()
    stopped_early = False
    trainable.train()
    set_batchnorm_mode(trainable, config.bn)
    with open(out / LOG_FILE, "a", encoding="utf-8") if rank == 0 else contextlib.nullcontext() as log:
        for data in track(loader, f"train {config.recipe}", total=len(sampler)):
            torch.manual_seed(sample_seed(config.seed, (step + 1) * 1_000_003 + rank))
            data = {key: value.to(device) for key, value in data.items()}
            if config.channels_last:
                data["image"] = data["image"].contiguous(memory_format=torch.channels_last)
            batch = recipe.batch(data, np.random.default_rng([config.seed, step, rank]))
            with autocast:
                loss, terms = recipe.loss(trainable, batch)
            if not torch.isfinite(loss):
                raise OodsegError(f"recipe {config.recipe}: loss is {float(loss)} at step {step} (lower --lr?)")
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = (nn.utils.clip_grad_norm_(params_to_clip, config.clip) if config.clip
                         else torch.zeros(()))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            over_budget = config.time_budget is not None and time.perf_counter() - started > config.time_budget
            if distributed:  # every rank must stop at the same step
                over_budget = bool(dist_utils.all_reduce_sum(torch.tensor([float(over_budget)], device=device)) > 0)
            last = step == total_steps or over_budget
            if step % config.log_every == 0 or last:
                record = _log_record(step, len(train_data), config.batch_size, lr, loss, terms, grad_norm, device)
                record["seconds"] = round(time.perf_counter() - started, 3)
                if rank == 0:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if callback is not None:
                    callback(step, record)
            if step % config.ckpt_every == 0 or last:
                if rank == 0:
                    _save(out, step, recipe, unwrap(trainable), optimizer, scheduler, scaler, config)
                dist_utils.barrier()
            if over_budget:
                stopped_early = step < total_steps
                break
    seconds = time.perf_counter() - started
    if start_step >= total_steps and rank == 0:  # resumed a finished run: nothing left to train
        _save(out, step, recipe, unwrap(trainable), optimizer, scheduler, scaler, config)
    model, _, _ = recipe.export(unwrap(trainable))
    val_miou = None
    if val_data is not None and len(val_data):
        val_miou = validation_miou(model, val_data, config.num_classes, device)
    summary = {"schema": "oodseg.train", "version": 1, "recipe": config.recipe, "steps": step,
               "total_steps": total_steps, "stopped_early": stopped_early, "seconds": round(seconds, 3),
               "val_mIoU": val_miou, "checkpoint": str((out / CHECKPOINT_DIR).resolve()), "architecture": config.arch,
               "world_size": world}
    if rank == 0:
        write_json(out / SUMMARY_FILE, summary)
    dist_utils.barrier()
    return summary


def _log_record(step: int, num_items: int, batch_size: int, lr: float, loss: torch.Tensor, terms: dict,
                grad_norm: torch.Tensor, device: torch.device) -> dict:
    """One ``log.jsonl`` object; loss terms averaged over ranks."""
    names = sorted(terms)
    values = torch.tensor([float(loss.detach()), float(grad_norm)] + [float(terms[n]) for n in names],
                          dtype=torch.float64, device=device)
    values = (dist_utils.all_reduce_sum(values) / dist_utils.world_size()).tolist()
    record = {"step": step, "epoch": (step * batch_size) // num_items, "lr": lr, "loss": values[0]}
    record.update({name: value for name, value in zip(names, values[2:])})
    record["grad_norm"] = values[1]
    return record
