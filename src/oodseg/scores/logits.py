"""Logit-magnitude scores: ``max_logit`` and ``energy`` (SPEC §1)."""
from __future__ import annotations

import torch

from oodseg.scores.base import Scorer, check_positive
from oodseg.scores.shared import ScoreInputs


class MaxLogit(Scorer):
    """``max_logit``: ``-max_c l_c``."""

    name = "max_logit"

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -inputs.max_logit


class Energy(Scorer):
    """``energy``: free energy ``-T·logsumexp(l/T)`` (Liu et al. 2020), default ``T = 1``."""

    name = "energy"

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__(temperature=check_positive("energy: temperature", temperature))

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        temperature = self.params["temperature"]
        return -temperature * inputs.logsumexp(temperature)
