"""A training method is a *recipe* (a loss + a data recipe): the contract, the helpers recipes share,
and the registry of recipes by name. The loop that runs a recipe is :mod:`oodseg.workflows.train`.

Recipe interface (stable; every recipe module implements it)::

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

Recipes are registered by name with a lazy import (:data:`RECIPES`): ``baseline``
(:mod:`oodseg.training.baseline`), ``entropy-max`` (:mod:`oodseg.training.entropy_max`),
``nflowjs`` (:mod:`oodseg.training.nflowjs`), ``rpl`` (:mod:`oodseg.training.rpl`); for mask-classification
networks ``mask-baseline`` (:mod:`oodseg.training.mask_baseline`) and ``rba`` (:mod:`oodseg.training.rba`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from oodseg import distributed as dist_utils
from oodseg.conventions import model_logits, resize_logits
from oodseg.errors import OodsegError
from oodseg.keyvalue import check_keywords

if TYPE_CHECKING:
    from oodseg.training.config import TrainConfig

#: recipe name -> "module:Class" (imported on first use)
RECIPES: dict[str, str] = {
    "baseline": "oodseg.training.baseline:BaselineRecipe",
    "entropy-max": "oodseg.training.entropy_max:EntropyMaxRecipe",
    "nflowjs": "oodseg.training.nflowjs:NFlowJSRecipe",
    "rpl": "oodseg.training.rpl:RPLRecipe",
    "mask-baseline": "oodseg.training.mask_baseline:MaskBaselineRecipe",
    "rba": "oodseg.training.rba:RbARecipe",
}


def recipe_class(name: str) -> type["Recipe"]:
    """The recipe class registered as ``name`` (imported on first use); OodsegError naming ``recipe``."""
    if name not in RECIPES:
        raise OodsegError(f"recipe: unknown recipe {name!r} (available: {', '.join(RECIPES)})")
    module_name, cls_name = RECIPES[name].split(":")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise OodsegError(f"recipe: {name} is not available in this installation ({exc})") from exc


def get_recipe(name: str, **params: Any) -> "Recipe":
    """Instantiate the recipe registered as ``name`` with its options ``params`` (unknown keys and values of
    the wrong type refused in one line listing the recipe's keys, :func:`oodseg.keyvalue.check_keywords`)."""
    cls = recipe_class(name)
    check_keywords(f"recipe {name}", cls, params, closed=True)
    return cls(**params)


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
    return resize_logits(model_logits(module(images)), images.shape[-2:]).float()


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


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
