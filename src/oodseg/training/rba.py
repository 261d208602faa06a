"""Recipe ``rba``: RbA's outlier fine-tuning of a mask-classification network (Nayal et al., ICCV 2023; SPEC §9).

Starting from a closed-set checkpoint (``--init``, e.g. trained with ``mask-baseline``), only the class
head (``class_embed``) and the learned queries (``query_feat``, ``query_pos``) are trained; batch norms
stay frozen. Outlier objects are pasted into the inlier crops (label 254, as ``entropy-max`` pastes them:
:func:`oodseg.training.outliers.add_outliers`). The loss is the set-prediction loss on the inliers
(outlier pixels ignored) plus ``outlier_weight`` × RbA's squared-hinge loss on ``s = −Σ_k tanh(P_k)``
(:func:`oodseg.training.mask_losses.rba_outlier_loss`), both on every decoder layer as in RbA's
criterion. RbA's published run (NazirNayal8/RbA ``ckpts/swin_b_1dl_rba_ood_coco/config.yaml``): AdamW,
lr 1e-4, 2000 iterations of batch 16, OUTLIER_WEIGHT 1, thresholds γ_in = 0, γ_out = 5. Here the run is
scaled to SynthStreet: 100 steps of batch 8 at lr 1e-3, chosen on the validation tracks (seed 0's
``mask-baseline`` model, ``rba`` AP / AUROC on anomaly_val: lr 1e-4 4.97 / 36.6, lr 1e-3 10.74 / 74.6; 400
steps at 1e-3 9.54 / 77.9). Score afterwards with ``rba``.
"""
from __future__ import annotations

from typing import Any

from oodseg.errors import OodsegError
from oodseg.training.mask_baseline import check_mask_model, mask_set_loss
from oodseg.training.mask_losses import rba_outlier_loss
from oodseg.training.outliers import OutlierPool, add_outliers
from oodseg.training.recipe import Recipe, rank_mean

#: parameter-name prefixes trained by RbA's fine-tuning: the class head and the queries
TRAINED = ("class_embed.", "query_feat.", "query_pos.")


class RbARecipe(Recipe):
    """RbA fine-tuning. Params: ``outlier_weight`` (1.0), ``inlier_upper`` (γ_in, 0.0), ``outlier_lower``
    (γ_out, 5.0), ``rate`` (share of crops that get a pasted object, 1.0), ``size_range`` ((0.1, 0.4))."""

    name = "rba"
    defaults = {"arch": "small-mask2former", "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.0, "steps": 100,
                "schedule": "poly", "bn": "frozen", "ckpt_every": 50, "clip": 1.0}

    def __init__(self, outlier_weight: float = 1.0, inlier_upper: float = 0.0, outlier_lower: float = 5.0,
                 rate: float = 1.0, size_range: tuple[float, float] = (0.1, 0.4), **params: Any) -> None:
        super().__init__(**params)
        if float(outlier_weight) < 0:
            raise OodsegError(f"recipe rba: outlier_weight must be >= 0, got {outlier_weight}")
        if not 0.0 < float(rate) <= 1.0:
            raise OodsegError(f"recipe rba: rate must be in (0, 1], got {rate}")
        low, high = (float(v) for v in size_range)
        if not 0.0 < low <= high <= 1.0:
            raise OodsegError(f"recipe rba: size_range must satisfy 0 < low <= high <= 1, got {size_range}")
        self.outlier_weight, self.rate, self.size_range = float(outlier_weight), float(rate), (low, high)
        self.inlier_upper, self.outlier_lower = float(inlier_upper), float(outlier_lower)

    def setup(self, model, config):
        if not config.outliers:
            raise OodsegError("outliers: rba needs an outlier pool (folder with images/ and masks/)")
        check_mask_model(self.name, model)
        self.pool = OutlierPool(config.outliers, mask_suffix=config.outlier_mask_suffix)
        self.num_classes = config.num_classes
        trained = 0
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(TRAINED))
            trained += int(parameter.requires_grad)
        if not trained:
            raise OodsegError(f"recipe rba: {type(model).__name__} has no class_embed / query_feat / query_pos "
                              "parameters to fine-tune")
        return super().setup(model, config)

    def batch(self, data, rng):
        return add_outliers(data, self.pool, "paste", self.rate, self.size_range)

    def loss(self, module, batch):
        total, terms, layers, small = mask_set_loss(module, batch["image"], batch["label"], self.num_classes)
        outlier = sum(rba_outlier_loss(classes, masks, small, self.num_classes, self.inlier_upper, self.outlier_lower,
                                       normalizer=rank_mean)
                      for classes, masks in layers)
        terms["rba"] = float(outlier.detach()) / len(layers)
        return total + self.outlier_weight * outlier, terms
