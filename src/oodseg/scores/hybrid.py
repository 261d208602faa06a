"""Scores of networks trained with an OoD head next to the classifier: ``densehybrid`` (SPEC §8)."""
from __future__ import annotations

import torch

from oodseg.errors import OodsegError
from oodseg.scores.base import Scorer
from oodseg.scores.shared import ScoreInputs


class DenseHybrid(Scorer):
    """``densehybrid``: ``−logsumexp_c l_c + log softmax(l_ood)_1`` (Grcić et al., ECCV 2022).

    The sum of the (negated, unnormalised) log-density of the closed-set logits and the log
    posterior of "outlier" from the 2-way OoD head (``SegOutput.extras["ood_logits"]``, channel 1),
    as ``matejgrcic/DenseHybrid`` ``evaluations/evaluations.py`` and ``smiyc_submission.py`` compute it;
    here the log posterior is a ``log_softmax``, which is finite where the source's
    ``log(softmax(·)[1])`` underflows to ``-inf``.
    """

    name = "densehybrid"
    needs = frozenset({"logits", "ood_logits"})

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        ood = inputs.extra("ood_logits")
        if ood.shape[1] != 2:
            raise OodsegError(f"ood_logits: the DenseHybrid head has 2 channels, got shape {tuple(ood.shape)}")
        return torch.log_softmax(ood, dim=1)[:, 1] - inputs.logsumexp()

