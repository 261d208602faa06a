"""Softmax-confidence scores: ``msp``, ``entropy``, ``variation_ratio``, ``margin`` (SPEC §1).

Every score reads the shared ``exp(l - m)`` and its sum ``s`` from :class:`ScoreInputs`;
with ``m`` the max logit, ``p_ĉ = 1/s`` needs no further pass over the classes.
"""
from __future__ import annotations

import math

import torch

from oodseg.scores.base import Scorer
from oodseg.scores.shared import ScoreInputs


def max_softmax_complement(inputs: ScoreInputs, temperature: float = 1.0) -> torch.Tensor:
    """(B, h, w) ``1 - max_c softmax(l/T)_c = 1 - 1/s`` with ``s = Σ exp((l - m)/T)``."""
    return 1.0 - inputs.exp_sum(temperature).reciprocal()


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """(B, h, w) ``-Σ p log p / log C`` of (B, C, h, w) probabilities (``0 log 0 = 0``), in [0, 1]."""
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    return (entropy / math.log(probs.shape[1])).clamp_(0.0, 1.0)


class MaxSoftmax(Scorer):
    """``msp``: ``1 - max_c p_c`` in [0, 1)."""

    name = "msp"

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return max_softmax_complement(inputs)


class Entropy(Scorer):
    """``entropy``: ``-Σ_c p_c log p_c / log C`` in [0, 1]."""

    name = "entropy"

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return (inputs.softmax_entropy(1.0) / math.log(inputs.num_classes)).clamp_(0.0, 1.0)


class VariationRatio(Scorer):
    """``variation_ratio``: ``1 - p_ĉ`` for the predicted class ``ĉ`` (one pass: equals ``msp``)."""

    name = "variation_ratio"

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return max_softmax_complement(inputs)


class Margin(Scorer):
    """``margin``: ``1 - p_(1) + p_(2)`` (largest minus second-largest probability), in (0, 1]."""

    name = "margin"

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        first, second = inputs.top2
        return 1.0 - (1.0 - torch.exp(second - first)) / inputs.exp_sum(1.0)
