"""``odin``: temperature-scaled max softmax after an input perturbation (Liang et al., ICLR 2018).

``variant="paper"`` (default) — the paper and its published code (facebookresearch/odin):
``x̃ = x - ε·sign(-∇ₓ Σ_pixels log max_c softmax(l(x)/T)_c)``, ``T = 1000``, ``ε = 0.0014``.
Their code takes the sign of the input gradient of ``CE(l/T, argmax)`` w.r.t. the *normalised*
image and divides it by the normalisation std before stepping by ε, so ε is a step in [0, 1]
pixel space. oodseg models take [0, 1] RGB and normalise inside: stepping the [0, 1] input by ε
is the paper's step. For dense use every pixel's log max-softmax is summed into one objective
(one backward pass); the step raises the confidence (descent on the CE), more so on inliers.

``variant="smiyc"`` — the SegmentMeIfYouCan baseline (road-anomaly-benchmark ``methods/utils.py``):
``T = 3``, ``ε = 1e-4`` in the ImageNet-normalised input space (a step of ``ε·σ_c`` in [0, 1]
pixels, ``σ = (0.229, 0.224, 0.225)``), objective ``CE(softmax(l(x)), argmax)`` — cross-entropy
applied to the softmax *outputs*, at T = 1, averaged over pixels — and the opposite sign:
``x̃ = x + ε·sign(∇ₓ CE)``, a step that lowers the confidence.

Returned score (both variants): ``1/C - max_c softmax(l(x̃)/T)_c``, the paper's
``1 - max softmax`` minus the constant ``1 - 1/C``: the same ranking and metrics, but
well resolved. At T = 1000 the paper's value lies in a band ~1e-3 wide just below ``1 - 1/C``,
where float32 keeps ~2·10⁴ levels and float16 3. Here it is ``-d / (C·s)`` with
``d = -Σ_c expm1((l_c - m)/T) ≥ 0`` and ``s = C - d = Σ_c exp((l_c - m)/T)``, every digit of
which float32 keeps. Values in ``(-(1 - 1/C), 0]``; larger = more anomalous.
"""
from __future__ import annotations

from typing import Any

import torch

from oodseg.errors import OodsegError
from oodseg.scores.base import ModelScorer, as_adapter, check_choice, check_images, check_positive
from oodseg.scores.shared import ScoreInputs
from oodseg.scores.softmax import centered_max_softmax_complement

#: Default (temperature, epsilon) of each variant.
VARIANTS = {"paper": (1000.0, 0.0014), "smiyc": (3.0, 1e-4)}
#: Per-channel std of the ImageNet normalisation in which SMIYC's ε applies (their ``Normalize`` transform).
SMIYC_INPUT_STD = (0.229, 0.224, 0.225)


class ODIN(ModelScorer):
    """``odin``: ``variant`` ``"paper"`` (T=1000, ε=0.0014) or ``"smiyc"`` (T=3, ε=1e-4, see module doc);
    ``temperature`` T > 0 and perturbation size ``epsilon`` ε ≥ 0 override the variant's defaults."""

    name = "odin"

    def __init__(self, *, variant: str = "paper", temperature: float | None = None,
                 epsilon: float | None = None) -> None:
        check_choice("odin: variant", variant, tuple(VARIANTS))
        default_temperature, default_epsilon = VARIANTS[variant]
        temperature = default_temperature if temperature is None else temperature
        epsilon = default_epsilon if epsilon is None else epsilon
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < float("inf"):
            raise OodsegError(f"odin: epsilon must be a number ≥ 0, got {epsilon!r}")
        super().__init__(variant=variant, temperature=check_positive("odin: temperature", temperature),
                         epsilon=float(epsilon))

    def resolved_defaults(self) -> dict[str, Any]:
        """The constructor defaults with T and ε of this scorer's variant."""
        temperature, epsilon = VARIANTS[self.params["variant"]]
        return {**self.defaults(), "temperature": temperature, "epsilon": epsilon}

    def perturb(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) perturbed images ``x̃`` in the [0, 1] input space (the model's parameters get no gradients)."""
        inputs = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = ScoreInputs(adapter(inputs)).logits
            if self.params["variant"] == "paper":
                objective = torch.log_softmax(logits / self.params["temperature"], dim=1).amax(dim=1).sum()
            else:
                probs = torch.softmax(logits, dim=1)
                objective = torch.nn.functional.cross_entropy(probs, probs.argmax(dim=1))
            (gradient,) = torch.autograd.grad(objective, inputs)
        if self.params["variant"] == "paper":
            step = -self.params["epsilon"] * torch.sign(-gradient)
        else:
            std = torch.tensor(SMIYC_INPUT_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            step = self.params["epsilon"] * std * torch.sign(gradient)
        return (images + step).detach()

    def __call__(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ODIN score ``1/C - max softmax(l(x̃)/T)`` of (B, 3, H, W) images in [0, 1]."""
        adapter, images = as_adapter(adapter), check_images(images)
        perturbed = self.perturb(adapter, images) if self.params["epsilon"] > 0 else images
        with torch.no_grad():
            return centered_max_softmax_complement(ScoreInputs(adapter(perturbed)).logits,
                                                   self.params["temperature"])
