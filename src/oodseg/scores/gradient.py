"""``pgn``: pixel-wise gradient norms of the cross-entropy loss (Hornauer et al., SPEC §1.1).

Per pixel the loss gradient w.r.t. the 1×1 head weight is the outer product ``g ⊗ z``
(``g ∈ R^C``), and ``‖g ⊗ z‖_p = ‖g‖_p ‖z‖_p`` for every p > 0, so the C×D gradient is never
formed. Norms are computed as ``log ‖x‖_p = logsumexp(p·log|x|)/p``: no overflow for small p
and no underflow for confident pixels.

- ``variant="paper"`` (eqs. 7, 8 and the authors' code): one-hot ``g_h = p_h (1 - δ_hĉ)``,
  uniform ``g_h = (C-1)/C · p_h``.
- ``variant="exact"``: the true gradient ``g = p - y``: one-hot ``p_h - δ_hĉ``, uniform ``p_h - 1/C``.
- ``layer="second_to_last"`` (paper A.2): gradient w.r.t. the k×k kernel of the
  ``conv → BN(eval) → ReLU`` block feeding the head, per pixel ``s ⊗ patch`` with
  ``s_f = (Σ_c W_cf g_c) · 1[pre-ReLU_f > 0] · γ_f/√(var_f + eps)`` and ``patch`` the unfolded
  k×k×K input window; ``‖s‖_p ‖patch‖_p``. ``Σ_patch |x|^p`` is a k×k window sum of
  ``Σ_K |x|^p``, so only a one-channel map is unfolded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oodseg.errors import OodsegError
from oodseg.scores.base import Scorer, check_choice, check_positive
from oodseg.scores.shared import ScoreInputs, as_float, channel_logsumexp, log_pnorm

VARIANTS = ("paper", "exact")
LABELS = ("onehot", "uniform")
LAYERS = ("last", "second_to_last")
#: The p values studied in the paper (any p > 0 is accepted).
PAPER_P = (0.1, 0.3, 0.5, 1.0, 2.0)


def _predicted_mask(inputs: ScoreInputs) -> torch.Tensor:
    """(B, C, h, w) bool one-hot of the predicted class ``ĉ``."""
    classes = torch.arange(inputs.num_classes, device=inputs.logits.device).view(1, -1, 1, 1)
    return inputs.memo(("predicted_mask",), lambda: classes == inputs.argmax.unsqueeze(1))


def log_label_gradient_norm(inputs: ScoreInputs, variant: str, label: str, p: float) -> torch.Tensor:
    """(B, h, w) ``log ‖g‖_p`` of the logit gradient ``g`` of the chosen variant and label."""
    num_classes = inputs.num_classes
    if label == "uniform":
        if variant == "paper":
            return math.log((num_classes - 1) / num_classes) + log_pnorm(inputs.log_softmax, p)
        deviation = inputs.memo(("uniform_deviation",), lambda: torch.log((inputs.softmax(1.0) - 1.0 / num_classes).abs()))
        return log_pnorm(deviation, p)
    others = inputs.memo(("log_softmax_others",),
                         lambda: inputs.log_softmax.masked_fill(_predicted_mask(inputs), float("-inf")))
    log_others = log_pnorm(others, p)  # log (Σ_{h≠ĉ} p_h^p)^{1/p}
    if variant == "paper":
        return log_others
    # exact: the predicted class adds |p_ĉ - 1| = Σ_{h≠ĉ} p_h, taken in log space (no cancellation)
    log_rest = inputs.memo(("log_rest",), lambda: channel_logsumexp(others))
    return torch.logaddexp(log_others * p, log_rest * p) / p


def label_gradient(inputs: ScoreInputs, variant: str, label: str) -> torch.Tensor:
    """(B, C, h, w) signed logit gradient ``g`` of the chosen variant and label."""
    probs = inputs.softmax(1.0)
    num_classes = inputs.num_classes
    if label == "uniform":
        return probs * ((num_classes - 1) / num_classes) if variant == "paper" else probs - 1.0 / num_classes
    predicted = _predicted_mask(inputs)
    others = probs.masked_fill(predicted, 0.0)
    if variant == "paper":
        return others
    return torch.where(predicted, -others.sum(dim=1, keepdim=True), others)


def log_patch_pnorm(inputs: ScoreInputs, p: float) -> torch.Tensor:
    """(B, h, w) ``log ‖patch‖_p`` of the k×k×K input window of the block's conv at every head pixel."""
    block = inputs.block
    image = as_float("block.input", block.input, 4, "(B, K, H, W)")
    kernel = as_float("block.conv_weight", block.conv_weight, 4, "(F, K, kh, kw)")
    if kernel.shape[1] != image.shape[1]:
        raise OodsegError(f"block.conv_weight: {kernel.shape[1]} input channels, block.input has {image.shape[1]}")
    log_sum = channel_logsumexp(torch.log(image.abs()) * p).unsqueeze(1)  # (B, 1, H, W) log Σ_K |x|^p
    pad_h, pad_w = block.padding
    padded = F.pad(log_sum, (pad_w, pad_w, pad_h, pad_h), value=float("-inf"))
    windows = F.unfold(padded, kernel_size=tuple(kernel.shape[2:]), dilation=block.dilation, stride=block.stride)
    batch, _, height, width = inputs.logits.shape
    if windows.shape[-1] != height * width:
        raise OodsegError(f"block: conv geometry gives {windows.shape[-1]} output pixels, logits have "
                          f"{height}×{width}")
    return (channel_logsumexp(windows) / p).view(batch, height, width)


def log_block_gradient_pnorm(inputs: ScoreInputs, variant: str, label: str, p: float) -> torch.Tensor:
    """(B, h, w) ``log ‖s‖_p`` of the back-propagated signal at the block's conv output."""
    block = inputs.block
    pre_relu = as_float("block.pre_relu", block.pre_relu, 4, "(B, F, h, w)")
    scale = as_float("block.bn_scale", block.bn_scale, 1, "(F,)")
    weight = inputs.weight
    batch, _, height, width = inputs.logits.shape
    if pre_relu.shape != (batch, weight.shape[1], height, width) or scale.shape[0] != weight.shape[1]:
        raise OodsegError(f"block: pre_relu {tuple(pre_relu.shape)} / bn_scale {tuple(scale.shape)} do not match "
                          f"head weight {tuple(weight.shape)} and logits {tuple(inputs.logits.shape)}")

    def make() -> torch.Tensor:
        gradient = label_gradient(inputs, variant, label)
        signal = torch.einsum("cf,bchw->bfhw", weight, gradient)
        signal = signal * (pre_relu > 0) * scale.view(1, -1, 1, 1)
        return torch.log(signal.abs())

    return log_pnorm(inputs.memo(("block_signal", variant, label), make), p)


#: ``log_scale`` value of a zero gradient norm (log 0): finite, float16-representable, below any real log-norm.
LOG_ZERO_NORM = -1e4


class PixelGradientNorm(Scorer):
    """``pgn``: ``‖∇_W CE(softmax(l), y)‖_p`` per pixel; larger = more uncertain.

    Args:
        variant: ``"paper"`` (eqs. 7/8, reproduces the paper) or ``"exact"`` (true gradient).
        label: ``"onehot"`` (predicted class ĉ) or ``"uniform"`` auxiliary label.
        p: exponent of the p-norm (paper: 0.1, 0.3, 0.5, 1, 2), default 0.5.
        layer: ``"last"`` (1×1 head weight) or ``"second_to_last"`` (k×k kernel of the block
            feeding the head; needs ``SegOutput.block``).
        log_scale: return ``log`` of the norm (use for small p on wide layers, where the norm
            itself exceeds the float32 range); a zero norm gives :data:`LOG_ZERO_NORM`.
    """

    name = "pgn"

    def __init__(self, *, variant: str = "paper", label: str = "onehot", p: float = 0.5, layer: str = "last",
                 log_scale: bool = False) -> None:
        if not isinstance(log_scale, bool):
            raise OodsegError(f"pgn: log_scale must be True or False, got {log_scale!r}")
        super().__init__(variant=check_choice("pgn: variant", variant, VARIANTS),
                         label=check_choice("pgn: label", label, LABELS),
                         p=check_positive("pgn: p", p), layer=check_choice("pgn: layer", layer, LAYERS),
                         log_scale=log_scale)
        self.pixelwise = layer == "last"
        self.needs = frozenset({"logits", "features"} if layer == "last" else {"logits", "weight", "block"})

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        variant, label, p = self.params["variant"], self.params["label"], self.params["p"]
        if self.params["layer"] == "last":
            log_norm = log_label_gradient_norm(inputs, variant, label, p) + inputs.log_feature_pnorm(p)
        else:
            log_norm = log_block_gradient_pnorm(inputs, variant, label, p) + log_patch_pnorm(inputs, p)
        if self.params["log_scale"]:
            # a zero gradient (z = 0, or every unit of the block gated off by its ReLU) has log-norm -inf:
            # stored as LOG_ZERO_NORM, below every nonzero norm, so the map stays finite with the same ranking
            return log_norm.nan_to_num(nan=float("nan"), neginf=LOG_ZERO_NORM)
        norm = torch.exp(log_norm)
        if bool(torch.isinf(norm).any()):
            raise OodsegError(f"pgn: p={p} gradient norm exceeds the float32 range; use log_scale=True")
        return norm
