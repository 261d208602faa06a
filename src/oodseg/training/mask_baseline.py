"""Recipe ``mask-baseline``: closed-set training of a mask-classification network (SPEC §9).

Mask2Former's set-prediction loss (:func:`oodseg.training.mask_losses.set_prediction_loss`) on the final
decoder layer and, as Mask2Former's deep supervision, on every earlier layer's predictions
(``aux_outputs``), against the trainId labels resized (nearest, cell centres) to the mask resolution.
For networks that take ``images (B, 3, H, W)`` in [0, 1] and return a mapping with
``class_queries_logits`` / ``masks_queries_logits`` (``--arch small-mask2former``).
"""
from __future__ import annotations

import torch
from torch import nn

from oodseg.errors import OodsegError
from oodseg.mask_adapter import is_mask_classification, query_outputs
from oodseg.training.mask_losses import NO_OBJECT_WEIGHT, set_prediction_loss
from oodseg.training.recipe import Recipe, labels_at, rank_mean


def mask_set_loss(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  no_object_weight: float = NO_OBJECT_WEIGHT) -> tuple[torch.Tensor, dict[str, float], list, torch.Tensor]:
    """Set-prediction loss summed over the final and the auxiliary decoder layers.

    Returns ``(total, logged terms of the final layer, [(class_logits, mask_logits) per layer, final last],
    labels at the mask resolution)``.
    """
    output = module(images)
    layers = [query_outputs(aux) for aux in output.get("aux_outputs", [])] + [query_outputs(output)]
    small = labels_at(labels, layers[-1][1].shape[-2:])
    total, terms = images.new_zeros(()), {}
    for classes, masks in layers:
        loss, terms = set_prediction_loss(classes, masks, small, num_classes, no_object_weight, normalizer=rank_mean)
        total = total + loss
    return total, {name: float(value.detach()) for name, value in terms.items()}, layers, small


def check_mask_model(recipe: str, model: nn.Module) -> None:
    """OodsegError unless ``model`` is a mask-classification network."""
    if not is_mask_classification(model):
        raise OodsegError(f"recipe {recipe}: needs a mask-classification network (--arch small-mask2former or --init "
                          f"of one), got {type(model).__name__}")


class MaskBaselineRecipe(Recipe):
    """Closed-set set-prediction training. Param ``no_object_weight`` (0.1, Mask2Former's)."""

    name = "mask-baseline"
    #: Mask2Former's optimizer (AdamW, weight decay 0.05, gradient clipping) at a CPU-scale lr; not tuned on
    #: SynthStreet yet: one 300-step smoke run (batch 8, crop 128) reached 28 % val mIoU (README)
    defaults = {"arch": "small-mask2former", "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05,
                "warmup_steps": 20, "class_uniform": 0.5, "clip": 1.0}

    def __init__(self, no_object_weight: float = NO_OBJECT_WEIGHT) -> None:
        super().__init__()
        if not 0.0 < float(no_object_weight) <= 1.0:
            raise OodsegError(f"recipe mask-baseline: no_object_weight must be in (0, 1], got {no_object_weight}")
        self.no_object_weight = float(no_object_weight)

    def setup(self, model, config):
        check_mask_model(self.name, model)
        self.num_classes = config.num_classes
        return super().setup(model, config)

    def loss(self, module, batch):
        total, terms, _, _ = mask_set_loss(module, batch["image"], batch["label"], self.num_classes,
                                           self.no_object_weight)
        return total, terms
