"""Feature-norm and norm-normalised class scores (the "decoupling" thesis, SPEC §1).

Per pixel the class scores are ``s_c = ω_c^{η-1} · f_c / ‖z‖^{1-δ}`` with ``f = W z`` (plus ``b``
when ``include_bias``), ``ω_c = ‖W_c‖₂``. ``δ = 0`` is full normalisation (the thesis's
default), ``δ = 1`` the raw class scores (eq. 5.7); ``η = 1`` leaves class weights as they are,
``η = 0`` gives cosine similarities only (eq. 4.23). The thesis drops the bias, so
``include_bias=False`` is the default.
"""
from __future__ import annotations

import torch

from oodseg.errors import OodsegError
from oodseg.scores.base import Scorer, check_positive
from oodseg.scores.shared import NORM_FLOOR, ScoreInputs, channel_logsumexp


def normalized_class_scores(inputs: ScoreInputs, *, include_bias: bool, delta: float, eta: float = 1.0) -> torch.Tensor:
    """(B, C, h, w) ``ω^{η-1} (W z [+ b]) / ‖z‖^{1-δ}``, shared between scorers with equal options."""

    def make() -> torch.Tensor:
        scores = inputs.projection
        if include_bias:
            scores = scores + inputs.bias.view(1, -1, 1, 1)
        if eta != 1.0:
            scores = scores * inputs.class_weight_norm.pow(eta - 1.0).view(1, -1, 1, 1)
        if delta != 1.0:
            scores = scores / inputs.feature_norm.clamp_min(NORM_FLOOR).pow(1.0 - delta).unsqueeze(1)
        return scores

    return inputs.memo(("normalized_class_scores", include_bias, float(delta), float(eta)), make)


def _check_options(name: str, include_bias: object, delta: object) -> dict:
    if not isinstance(include_bias, bool):
        raise OodsegError(f"{name}: include_bias must be True or False, got {include_bias!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta <= 1.0:
        raise OodsegError(f"{name}: delta must be a number in [0, 1], got {delta!r}")
    return {"include_bias": include_bias, "delta": float(delta)}


class FeatureNorm(Scorer):
    """``feature_norm``: ``-‖z‖₂`` of the head input (thesis "Norm-N")."""

    name = "feature_norm"
    needs = frozenset({"features"})

    def __init__(self) -> None:
        super().__init__()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -inputs.feature_norm


class NormalizedMaxLogit(Scorer):
    """``n_max_logit``: ``-max_c (W z)_c / ‖z‖^{1-δ}``."""

    name = "n_max_logit"
    needs = frozenset({"features", "weight"})

    def __init__(self, *, include_bias: bool = False, delta: float = 0.0) -> None:
        super().__init__(**_check_options(self.name, include_bias, delta))

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -normalized_class_scores(inputs, **self.params).amax(dim=1)


class NormalizedEnergy(Scorer):
    """``n_energy``: ``-T·logsumexp((W z)/(‖z‖^{1-δ} T))``."""

    name = "n_energy"
    needs = frozenset({"features", "weight"})

    def __init__(self, *, temperature: float = 1.0, include_bias: bool = False, delta: float = 0.0) -> None:
        super().__init__(temperature=check_positive(f"{self.name}: temperature", temperature),
                         **_check_options(self.name, include_bias, delta))

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        temperature = self.params["temperature"]
        scores = normalized_class_scores(inputs, include_bias=self.params["include_bias"], delta=self.params["delta"])
        return -temperature * channel_logsumexp(scores / temperature if temperature != 1.0 else scores)


class ClassWeightedNormalizedEnergy(Scorer):
    """``n_energy_cw``: ``-logsumexp(ω_c^{η-1} (W z)_c / ‖z‖^{1-δ})``, ``η = 1.5`` (thesis eq. 4.23)."""

    name = "n_energy_cw"
    needs = frozenset({"features", "weight"})

    def __init__(self, *, eta: float = 1.5, include_bias: bool = False, delta: float = 0.0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not abs(eta) < float("inf"):
            raise OodsegError(f"{self.name}: eta must be a finite number, got {eta!r}")
        super().__init__(eta=float(eta), **_check_options(self.name, include_bias, delta))

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -channel_logsumexp(normalized_class_scores(inputs, **self.params))
