"""``jsd``: Jensen–Shannon divergence between the uniform distribution and the tempered softmax.

``JS(U, Q) = ½KL(U‖M) + ½KL(Q‖M)``, ``M = (U + Q)/2``, ``Q = softmax(l/T)``, natural log;
rewritten as ``JS = ½(-log C - H(Q)) + H(M)`` so that only ``M`` needs a logarithm per class.

Sign: JS to the uniform distribution is *small* for anomalies (NFlowJS trains pasted negatives
towards uniform, SPEC §2.2), so the anomaly score is ``-JS(U, Q)`` in (-log 2, 0] — the same
convention as ``max_logit = -max l``. It ranks pixels exactly as NFlowJS's eq. (7) thresholded
from below.
"""
from __future__ import annotations

import math

import torch

from oodseg.scores.base import Scorer, check_positive
from oodseg.scores.shared import ScoreInputs


class JensenShannon(Scorer):
    """``jsd``: ``-JS(U, softmax(l/T))``, default ``T = 2``; larger = closer to uniform = more anomalous."""

    name = "jsd"

    def __init__(self, *, temperature: float = 2.0) -> None:
        super().__init__(temperature=check_positive("jsd: temperature", temperature))

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        temperature = self.params["temperature"]
        num_classes = inputs.num_classes
        mixture_entropy = inputs.mixture_entropy(temperature)  # first: the kernel then gives both in one pass
        js = 0.5 * (-math.log(num_classes) - inputs.softmax_entropy(temperature)) + mixture_entropy
        return -js.clamp_(0.0, math.log(2.0))
