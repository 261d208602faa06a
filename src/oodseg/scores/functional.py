"""Plain tensor functions, one per logit/feature-based score, for users who have only tensors.

Shapes: ``logits`` (B, C, h, w), ``features`` z (B, D, h, w), ``weight`` W (C, D), ``bias`` b (C,).
Every function returns a (B, h, w) float32 map, larger = more anomalous, and is the
registered scorer of the same name (``oodseg.scores.get``) applied to these tensors.
"""
from __future__ import annotations

import torch

from oodseg.adapter import SegOutput
from oodseg.scores.base import Scorer


def _run(name: str, params: dict, **tensors) -> torch.Tensor:
    from oodseg.scores import get

    return _apply(get(name, **params), **tensors)


def _apply(scorer: Scorer, logits: torch.Tensor | None = None, features: torch.Tensor | None = None,
           weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    return scorer(SegOutput(logits=logits, features=features, weight=weight, bias=bias))


def msp(*, logits: torch.Tensor) -> torch.Tensor:
    """``1 - max_c p_c``."""
    return _run("msp", {}, logits=logits)


def entropy(*, logits: torch.Tensor) -> torch.Tensor:
    """``-Σ p log p / log C``."""
    return _run("entropy", {}, logits=logits)


def variation_ratio(*, logits: torch.Tensor) -> torch.Tensor:
    """``1 - p_ĉ``."""
    return _run("variation_ratio", {}, logits=logits)


def margin(*, logits: torch.Tensor) -> torch.Tensor:
    """``1 - p_(1) + p_(2)``."""
    return _run("margin", {}, logits=logits)


def max_logit(*, logits: torch.Tensor) -> torch.Tensor:
    """``-max_c l_c``."""
    return _run("max_logit", {}, logits=logits)


def energy(*, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-T·logsumexp(l/T)``."""
    return _run("energy", {"temperature": temperature}, logits=logits)


def jsd(*, logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``-JS(U, softmax(l/T))`` (natural log)."""
    return _run("jsd", {"temperature": temperature}, logits=logits)


def sml(*, logits: torch.Tensor, class_mean: torch.Tensor, class_std: torch.Tensor, **options) -> torch.Tensor:
    """``-(l_ĉ - μ_ĉ)/σ_ĉ`` with given (C,) ``class_mean``/``class_std``; ``options`` as ``get("sml")``."""
    from oodseg.scores import get

    scorer = get("sml", **options).load_state_dict({"mean": class_mean, "std": class_std})
    return _apply(scorer, logits=logits)


def feature_norm(*, features: torch.Tensor) -> torch.Tensor:
    """``-‖z‖₂``."""
    return _run("feature_norm", {}, features=features)


def n_max_logit(*, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                include_bias: bool = False, delta: float = 0.0) -> torch.Tensor:
    """``-max_c (W z [+ b])_c / ‖z‖^{1-δ}``."""
    return _run("n_max_logit", {"include_bias": include_bias, "delta": delta},
                features=features, weight=weight, bias=bias)


def n_energy(*, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             temperature: float = 1.0, include_bias: bool = False, delta: float = 0.0) -> torch.Tensor:
    """``-T·logsumexp((W z [+ b]) / (‖z‖^{1-δ} T))``."""
    return _run("n_energy", {"temperature": temperature, "include_bias": include_bias, "delta": delta},
                features=features, weight=weight, bias=bias)


def n_energy_cw(*, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                eta: float = 1.5, include_bias: bool = False, delta: float = 0.0) -> torch.Tensor:
    """``-logsumexp(ω_c^{η-1} (W z [+ b])_c / ‖z‖^{1-δ})``, ``ω_c = ‖W_c‖``."""
    return _run("n_energy_cw", {"eta": eta, "include_bias": include_bias, "delta": delta},
                features=features, weight=weight, bias=bias)


def pgn(*, logits: torch.Tensor, features: torch.Tensor, variant: str = "paper", label: str = "onehot",
        p: float = 0.5, log_scale: bool = False) -> torch.Tensor:
    """Last-layer PGN ``‖g‖_p ‖z‖_p`` (see :mod:`oodseg.scores.gradient`)."""
    return _run("pgn", {"variant": variant, "label": label, "p": p, "log_scale": log_scale},
                logits=logits, features=features)


def mahalanobis(*, features: torch.Tensor, class_means: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``min_c (z - μ_c)ᵀ Σ⁺ (z - μ_c)`` with (C, D) ``class_means`` and (D, D) ``covariance``."""
    from oodseg.scores import get

    count = torch.ones(class_means.shape[0], dtype=torch.float64) if isinstance(class_means, torch.Tensor) else None
    scorer = get("mahalanobis").load_state_dict({"means": class_means, "covariance": covariance, "count": count})
    return _apply(scorer, features=features)
