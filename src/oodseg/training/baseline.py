"""The closed-set baseline recipe: pixel-wise cross entropy over the trainIds."""
from __future__ import annotations

import torch
import torch.nn as nn

from oodseg.errors import OodsegError
from oodseg.training.data import training_class_weights
from oodseg.training.recipe import Recipe, head_logits, labels_at, rank_mean, segmentation_logits


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
            if self.head is None:
                raise OodsegError(f"recipe baseline: model {type(model).__name__}: no 1×1 Conv2d classifier head "
                                  f"reproduces its output, so there is no head resolution to train at "
                                  f"(pass -p head_resolution=false)")
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
