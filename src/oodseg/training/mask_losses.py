"""Losses of mask-classification networks: Mask2Former's set-prediction loss and RbA's outlier loss.

Set prediction (DETR / MaskFormer / Mask2Former, facebookresearch/Mask2Former ``modeling/criterion.py`` and
``matcher.py``): per image the targets are the classes present in the label map, each with its binary
mask; queries and targets are matched by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
on ``class_weight · (−p_q[c_t]) + mask_weight · BCE(m_q, t) + dice_weight · dice(m_q, t)``; the loss is
a cross entropy on every query's class (unmatched queries → no-object, weighted ``no_object_weight``)
plus ``mask_weight · BCE + dice_weight · dice`` on the matched masks, divided by the number of targets.
Mask2Former's weights: class 2, mask 5, dice 5, no-object 0.1. Unlike Mask2Former the mask terms are
taken over every labelled pixel at the mask resolution (no point sampling: the maps are small).

RbA outlier loss (NazirNayal8/RbA ``mask2former/modeling/criterion.py:outlier_loss``, options
``OUTLIER_LOSS_TARGET: nls``, ``SCORE_NORM: tanh``, ``OUTLIER_LOSS_FUNC: squared_hinge``): with
``s = −Σ_k tanh(P_k)`` per pixel, ``0.5 · (mean_in ReLU(s − γ_in)² + mean_out ReLU(γ_out − s)²)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from oodseg.conventions import OUTLIER, VOID
from oodseg.mask_adapter import aggregate

#: Mask2Former's loss weights (class, mask BCE, dice) and the no-object class weight
CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT = 2.0, 5.0, 5.0, 0.1


def semantic_targets(labels: torch.Tensor, num_classes: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of ``labels`` (B, h, w) trainIds: ``(classes (T,) int64, masks (T, h, w) float, valid (h, w) bool)``;
    the classes present (ascending), their masks, and the labelled pixels (void 255 and outlier 254 excluded)."""
    targets = []
    for label in labels:
        valid = (label != VOID) & (label != OUTLIER) & (label < num_classes)
        classes = torch.unique(label[valid])
        targets.append((classes, (label[None] == classes[:, None, None]).float(), valid))
    return targets


def match_costs(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor,
                valid: torch.Tensor, weights: tuple[float, float, float] = (CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT)
                ) -> torch.Tensor:
    """(Q, T) matching cost of one image: class_logits (Q, C'), mask_logits (Q, h, w), targets (T,), (T, h, w)."""
    class_cost = -class_logits.softmax(-1)[:, classes]
    logits, target = mask_logits[:, valid], masks[:, valid]  # (Q, N), (T, N)
    pixels = max(1, logits.shape[1])
    bce = (F.softplus(-logits) @ target.T + F.softplus(logits) @ (1 - target).T) / pixels
    probabilities = logits.sigmoid()
    dice = 1 - (2 * probabilities @ target.T + 1) / (probabilities.sum(1)[:, None] + target.sum(1)[None] + 1)
    return weights[0] * class_cost + weights[1] * bce + weights[2] * dice


def hungarian_match(costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, target indices) of the minimum-cost assignment of a (Q, T) cost matrix."""
    rows, cols = linear_sum_assignment(costs.detach().double().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def set_prediction_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                        num_classes: int, no_object_weight: float = NO_OBJECT_WEIGHT,
                        weights: tuple[float, float, float] = (CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT),
                        normalizer=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Set-prediction loss of one decoder layer (see the module docstring).

    Args:
        class_logits: (B, Q, C') with no-object last; mask_logits (B, Q, h, w).
        labels: (B, h, w) int64 trainIds at the mask resolution (255 / 254 ignored).
        num_classes: K.
        normalizer: optional, maps this process's divisors (the class-weight total of the queries, the
            number of matched masks) to the ones used, e.g. their mean over DDP ranks (as Mask2Former
            averages ``num_masks``), so that DDP's gradient average equals one process's on the global batch.
            It is called twice on every call (a collective every rank joins).
    Returns:
        (total, {"ce", "mask", "dice"}) with total = ``w_class·ce + w_mask·mask + w_dice·dice``.
    """
    class_logits, mask_logits = class_logits.float(), mask_logits.float()
    columns = class_logits.shape[-1]
    target_classes = torch.full(class_logits.shape[:2], columns - 1, dtype=torch.int64, device=class_logits.device)
    bce_sum = dice_sum = class_logits.new_zeros(())
    count = 0
    for b, (classes, masks, valid) in enumerate(semantic_targets(labels, num_classes)):
        if classes.numel() == 0:
            continue
        with torch.no_grad():
            rows, cols = hungarian_match(match_costs(class_logits[b], mask_logits[b], classes, masks, valid, weights))
        rows, cols = rows.to(class_logits.device), cols.to(class_logits.device)
        target_classes[b, rows] = classes[cols]
        logits, target = mask_logits[b, rows][:, valid], masks[cols][:, valid]
        bce_sum = bce_sum + F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1).sum()
        probabilities = logits.sigmoid()
        dice_sum = dice_sum + (1 - (2 * (probabilities * target).sum(1) + 1)
                               / (probabilities.sum(1) + target.sum(1) + 1)).sum()
        count += int(rows.numel())
    class_weights = class_logits.new_ones(columns)
    class_weights[-1] = no_object_weight
    normalizer = normalizer or (lambda value: value)
    weighted = F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight=class_weights, reduction="none")
    ce = weighted.sum() / normalizer(class_weights[target_classes].sum())
    masks_count = normalizer(class_logits.new_tensor(float(count))).clamp(min=1)
    terms = {"ce": ce, "mask": bce_sum / masks_count, "dice": dice_sum / masks_count}
    total = weights[0] * terms["ce"] + weights[1] * terms["mask"] + weights[2] * terms["dice"]
    return total, terms


def rba_outlier_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     inlier_upper: float = 0.0, outlier_lower: float = 5.0, normalizer=None) -> torch.Tensor:
    """RbA's squared-hinge loss on ``s = −Σ_k tanh(P_k)`` (see the module docstring).

    ``labels`` (B, h, w) at the mask resolution: outlier pixels 254, inliers the trainIds < K, the rest
    ignored. RbA's published thresholds are γ_in = 0, γ_out = 5: as ``s ≤ 0`` everywhere, the inlier
    hinge is then inactive (inliers are held by the set-prediction loss) and every outlier pixel is
    pushed towards ``Σ_k tanh(P_k) = 0``; a negative ``inlier_upper`` also pushes inliers up.
    The loss is the mean inlier hinge, averaged with the mean outlier hinge when the batch has outlier
    pixels. ``normalizer`` (optional, e.g. the mean over DDP ranks) maps the pixel counts to the divisors,
    as in :func:`set_prediction_loss`.
    """
    score = -torch.tanh(aggregate(class_logits.float(), mask_logits.float(), num_classes)).sum(1)
    normalizer = normalizer or (lambda value: value)

    def mean_square(hinge: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = normalizer(pixels.sum().to(score.dtype))  # called for both classes on every rank
        return torch.where(pixels, hinge.pow(2), torch.zeros_like(score)).sum() / count.clamp(min=1), count

    inlier, _ = mean_square(F.relu(score - inlier_upper), labels < num_classes)
    outlier, outliers = mean_square(F.relu(outlier_lower - score), labels == OUTLIER)
    return 0.5 * (inlier + outlier) if bool(outliers > 0) else inlier

