"""``odin``: max softmax with temperature scaling after an input perturbation (Liang et al. 2018).

``x̃ = x - ε·sign(-∇ₓ Σ_pixels log max softmax(l(x)/T))`` (one backward pass for all pixels,
each pixel's objective summed), score ``1 - max softmax(l(x̃)/T)``; ``T = 1000``, ``ε = 0.0014``
in the [0, 1] image space the models take (SPEC §1).
"""
from __future__ import annotations

from typing import Any

import torch

from oodseg.errors import OodsegError
from oodseg.scores.base import ModelScorer, as_adapter, check_images, check_positive
from oodseg.scores.shared import ScoreInputs
from oodseg.scores.softmax import max_softmax_complement


class ODIN(ModelScorer):
    """``odin``: ``temperature`` T (default 1000) and perturbation size ``epsilon`` ε ≥ 0 (default 0.0014)."""

    name = "odin"

    def __init__(self, *, temperature: float = 1000.0, epsilon: float = 0.0014) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < float("inf"):
            raise OodsegError(f"odin: epsilon must be a number ≥ 0, got {epsilon!r}")
        super().__init__(temperature=check_positive("odin: temperature", temperature), epsilon=float(epsilon))

    def perturb(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) perturbed images ``x̃`` (the model's parameters get no gradients)."""
        temperature = self.params["temperature"]
        inputs = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = ScoreInputs(adapter(inputs)).logits
            objective = torch.log_softmax(logits / temperature, dim=1).amax(dim=1).sum()
            (gradient,) = torch.autograd.grad(objective, inputs)
        return (images - self.params["epsilon"] * torch.sign(-gradient)).detach()

    def __call__(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ODIN score of (B, 3, H, W) images in [0, 1]."""
        adapter, images = as_adapter(adapter), check_images(images)
        perturbed = self.perturb(adapter, images) if self.params["epsilon"] > 0 else images
        with torch.no_grad():
            return max_softmax_complement(ScoreInputs(adapter(perturbed)), self.params["temperature"])
