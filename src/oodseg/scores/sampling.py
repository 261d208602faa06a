"""Sampling scores that run the model several times: ``mc_dropout`` and ``ensemble`` (SPEC §1).

Both return the normalised entropy ``H(p̄)/log C`` of the mean softmax ``p̄`` at the head's
resolution; ``mc_dropout(mutual_information=True)`` returns ``(H(p̄) - mean_k H(p_k))/log C``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from oodseg.adapter import evaluation_mode
from oodseg.conventions import resize_logits
from oodseg.errors import OodsegError
from oodseg.scores.base import ModelScorer, as_adapter, check_images, check_positive_int
from oodseg.scores.shared import ScoreInputs
from oodseg.scores.softmax import normalized_entropy

#: Module types that MC dropout switches to training mode.
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class MCDropout(ModelScorer):
    """``mc_dropout``: ``samples`` stochastic passes with only the dropout layers in training mode.

    Every other module is put in eval mode (BN uses running statistics); all modes are
    restored afterwards, also on error. ``seed`` (optional) makes the dropout masks reproducible.
    A model whose dropout layers all have ``p = 0`` is refused (the passes would be identical and
    the score would equal ``entropy``).
    """

    name = "mc_dropout"

    def __init__(self, *, samples: int = 8, mutual_information: bool = False, seed: int | None = None) -> None:
        check_positive_int("mc_dropout: samples", samples)
        if not isinstance(mutual_information, bool):
            raise OodsegError(f"mc_dropout: mutual_information must be True or False, got {mutual_information!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise OodsegError(f"mc_dropout: seed must be an integer or None, got {seed!r}")
        super().__init__(samples=samples, mutual_information=mutual_information, seed=seed)

    def __call__(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) score from ``adapter`` (or an ``nn.Module``) on (B, 3, H, W) images in [0, 1]."""
        adapter, images = as_adapter(adapter), check_images(images)
        model: nn.Module = adapter.model
        dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
        if not dropouts:
            raise OodsegError("mc_dropout: the model has no dropout layers")
        if all(float(m.p) == 0.0 for m in dropouts):
            raise OodsegError(f"mc_dropout: all {len(dropouts)} dropout layers of the model have p=0, so every "
                              f"pass is the same and the score would equal 'entropy'")
        # a ModelAdapter runs the model in eval mode: it keeps the dropouts training only inside ``stochastic``
        stochastic = getattr(adapter, "stochastic", None)
        with evaluation_mode(model, dropouts), (stochastic(dropouts) if stochastic else contextlib.nullcontext()), \
                torch.no_grad(), torch.random.fork_rng(enabled=self.params["seed"] is not None,
                                                       devices=[images.device] if images.is_cuda else []):
            if self.params["seed"] is not None:
                torch.manual_seed(self.params["seed"])
            mean_probs, mean_entropy = self._sample(adapter, images)
        score = normalized_entropy(mean_probs)
        if self.params["mutual_information"]:
            score = (score - mean_entropy).clamp_(min=0.0)
        return score

    def _sample(self, adapter: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self.params["samples"]
        total_probs = total_entropy = None
        for _ in range(samples):
            inputs = ScoreInputs(adapter(images))
            probs = inputs.softmax(1.0)
            entropy = normalized_entropy(probs)
            total_probs = probs if total_probs is None else total_probs + probs
            total_entropy = entropy if total_entropy is None else total_entropy + entropy
        return total_probs / samples, total_entropy / samples


class Ensemble(ModelScorer):
    """``ensemble``: entropy of the mean softmax of the member models given as ``models=[...]``.

    Members are ``nn.Module``s or model adapters; each member's head logits are resized
    bilinearly to the first member's head resolution before the softmax. The ``adapter``
    passed at call time is not a member (list the main model in ``models`` to include it).
    """

    name = "ensemble"
    needs = frozenset({"model"})

    def __init__(self, *, models: Sequence[Any] = ()) -> None:
        if isinstance(models, (nn.Module, str)) or not isinstance(models, Sequence) or len(models) == 0:
            raise OodsegError("ensemble: models= needs a non-empty list of nn.Modules or model adapters")
        self.members = [as_adapter(m) for m in models]
        super().__init__(models=list(models))

    @property
    def key(self) -> str:
        return self.name

    def __call__(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) entropy of the members' mean softmax on (B, 3, H, W) images in [0, 1]."""
        images = check_images(images)
        total, size = None, None
        with torch.no_grad():
            for index, member in enumerate(self.members):
                logits = ScoreInputs(member(images)).logits
                if size is None:
                    size = logits.shape[2:]
                else:
                    logits = resize_logits(logits, size)
                if total is not None and logits.shape[1] != total.shape[1]:
                    raise OodsegError(f"ensemble: member {index} has {logits.shape[1]} classes, "
                                      f"member 0 has {total.shape[1]}")
                probs = torch.softmax(logits, dim=1)
                total = probs if total is None else total + probs
        return normalized_entropy(total / len(self.members))
