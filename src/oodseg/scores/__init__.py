"""Post-hoc pixel anomaly scores (SPEC §1): a registry of scorers by name.

>>> from oodseg import scores
>>> scorer = scores.get("n_energy_cw", eta=1.5)
>>> anomaly = scorer(out)                      # out: oodseg.adapter.SegOutput -> (B, h, w)
>>> maps = scores.compute(["msp", "entropy", "energy"], out)   # shared softmax work

Output-based scorers take a ``SegOutput``; model-based ones (``mc_dropout``, ``odin``,
``ensemble``) take ``(adapter, images)``; fitted ones (``sml``, ``mahalanobis``) need
``fit(outputs, labels)`` first. Plain tensor functions live in :mod:`oodseg.scores.functional`.
"""
from __future__ import annotations

import inspect

from oodseg.errors import OodsegError
# importing the family modules declares (and so registers) their scorers
from oodseg.scores import (divergence, fitted, gradient, hybrid, logits, mask, normalized,  # noqa: F401
                           perturbation, sampling, softmax)
from oodseg.scores.base import REGISTRY, FittedScorer, ModelScorer, Scorer, compute, refuse_head_scores

#: SPEC §1 order of :func:`available`, then the head-specific scores of SPEC §8 and the mask-classification
#: scores of SPEC §9; a registered score not
#: named here is listed after these, never left out
SPEC_ORDER = ("msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd", "feature_norm",
              "n_max_logit", "n_energy", "n_energy_cw", "pgn", "mc_dropout", "ensemble", "odin", "mahalanobis",
              "densehybrid", "rba", "m2a", "eam", "uno", "maskomaly")


def available() -> list[str]:
    """Names of every registered score: SPEC order first, then any other in the order declared."""
    rank = {name: i for i, name in enumerate(SPEC_ORDER)}
    return sorted(REGISTRY, key=lambda name: rank.get(name, len(rank)))


def get(name: str, **params) -> Scorer:
    """A new scorer ``name`` with ``params`` (the rest at their defaults); OodsegError on unknown names/params."""
    if name not in REGISTRY:
        raise OodsegError(f"score {name!r}: unknown; available: {', '.join(available())}")
    cls = REGISTRY[name]
    accepted = [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise OodsegError(f"score {name!r}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
    return cls(**params)


__all__ = ["FittedScorer", "ModelScorer", "Scorer", "available", "compute", "get", "refuse_head_scores"]
