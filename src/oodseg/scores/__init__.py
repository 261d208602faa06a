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
from oodseg.scores import (density, divergence, gradient, hybrid, logits, normalized, perturbation, sampling,
                           softmax)
from oodseg.scores.base import FittedScorer, ModelScorer, Scorer, compute

#: SPEC §1 order, then the head-specific scores of SPEC §8.
_ORDER = ("msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd", "feature_norm",
          "n_max_logit", "n_energy", "n_energy_cw", "pgn", "mc_dropout", "ensemble", "odin", "mahalanobis",
          "densehybrid")
_CLASSES = {cls.name: cls for module in (softmax, logits, density, divergence, normalized, gradient, sampling,
                                         perturbation, hybrid) for cls in module.SCORERS}
_REGISTRY: dict[str, type[Scorer]] = {name: _CLASSES[name] for name in _ORDER}


def available() -> list[str]:
    """Names of every registered score, in SPEC order."""
    return list(_REGISTRY)


def get(name: str, **params) -> Scorer:
    """A new scorer ``name`` with ``params`` (the rest at their defaults); OodsegError on unknown names/params."""
    if name not in _REGISTRY:
        raise OodsegError(f"score {name!r}: unknown; available: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[name]
    accepted = [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise OodsegError(f"score {name!r}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
    return cls(**params)


__all__ = ["FittedScorer", "ModelScorer", "Scorer", "available", "compute", "get"]
