"""Training losses on ``(B, C, H, W)`` logits and ``(B, H, W)`` int64 labels.

Labels: trainIds ``0..C-1`` are inlier pixels, 254 marks outlier (pasted/mixed) pixels,
255 is ignored. Every loss is a mean over the pixels it applies to, and is an exact zero
(still attached to the graph) when a batch has no such pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oodseg.conventions import OUTLIER



def _masked_mean(values: torch.Tensor, mask: torch.Tensor, normalizer=None) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (both (B,H,W)); ``0 * sum`` when the mask is empty (keeps the graph).
    ``normalizer``, optional: maps the pixel count to the divisor (e.g. its mean over DDP ranks)."""
    count = mask.sum() if normalizer is None else normalizer(mask.sum().to(values.dtype))
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1)


# --- cross entropy and entropy maximisation (Meta-OoD, SPEC §2.1) ---

def inlier_mask(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,H,W) bool: pixels labelled with a trainId ``0..num_classes-1``."""
    return (labels >= 0) & (labels < num_classes)


def inlier_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy ``-log p_y`` over inlier pixels (labels 254/255 ignored)."""
    mask = inlier_mask(labels, logits.shape[1])
    ce = F.cross_entropy(logits, torch.where(mask, labels, torch.zeros_like(labels)), reduction="none")
    return _masked_mean(ce, mask)


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, hard_fraction: float = 0.25,
                               class_weights: torch.Tensor | None = None,
                               normalizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Online hard-example mining ("bootstrapped" CE): mean ``-log p_y`` over the hardest pixels.

    Of the N inlier pixels of the batch (labels 254/255 ignored), the ``ceil(hard_fraction · N)``
    with the largest cross entropy are averaged; ``hard_fraction = 1`` is
    :func:`inlier_cross_entropy`. Rare and thin classes (poles, signs, bicycles), whose pixels
    stay hard longest, get a larger share of the gradient without per-class weights.
    ``class_weights`` (C,), optional: the average becomes the weighted mean
    ``Σ w_y·CE / Σ w_y`` over the chosen pixels (``F.cross_entropy(weight=...)``'s convention).
    ``normalizer``, optional: maps the (detached) weight total (pixel count when unweighted) of this
    process to the divisor, e.g. the mean total over DDP ranks, so that averaging the ranks' gradients
    gives the global (weighted) mean. It is called on every call, also without pixels: it may be a
    collective every rank has to join.
    Returns ``(loss, plain unweighted CE over all inlier pixels)``, both scalars (the second for logging).
    """
    if not 0.0 < hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    mask = inlier_mask(labels, logits.shape[1])
    targets = torch.where(mask, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, targets, reduction="none")
    plain = _masked_mean(ce, mask)
    if hard_fraction == 1.0 and class_weights is None:
        return (plain if normalizer is None else _masked_mean(ce, mask, normalizer)), plain
    count = int(mask.sum())
    if count == 0 and normalizer is None:
        return plain, plain
    weights = class_weights.to(ce)[targets] if class_weights is not None else torch.ones_like(ce)
    ce, weights = ce[mask], weights[mask]
    if hard_fraction < 1.0:
        hardest = torch.topk(ce, math.ceil(hard_fraction * count), sorted=False).indices
        ce, weights = ce[hardest], weights[hardest]
    total = weights.sum() if normalizer is None else normalizer(weights.sum().detach())
    return (weights * ce).sum() / total.clamp(min=torch.finfo(ce.dtype).tiny), plain


def inverse_frequency_weights(frequencies, power: float = 0.5) -> torch.Tensor:
    """(C,) float32 class weights ``f_c^-power``, scaled so that ``Σ f_c·w_c = 1`` (the average
    pixel keeps weight 1); classes that never occur (``f_c = 0``) get 0. ``power = 0`` gives all ones."""
    freq = torch.as_tensor(frequencies, dtype=torch.float64)
    if freq.ndim != 1 or not bool(torch.isfinite(freq).all()) or bool((freq < 0).any()) or float(freq.sum()) <= 0:
        raise ValueError("frequencies must be a 1-D array of non-negative numbers with a positive sum")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    freq = freq / freq.sum()
    present = freq > 0
    weights = torch.where(present, freq.clamp(min=torch.finfo(torch.float64).tiny) ** -float(power), 0.0)
    return (weights / (weights * freq).sum()).float()


def uniform_cross_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` pixels of ``-(1/C) Σ_j log p_j`` (CE against the uniform label).

    Equals ``KL(U‖p) + log C`` per pixel, so it is minimal (``log C``) exactly at the uniform softmax.
    """
    per_pixel = -F.log_softmax(logits, dim=1).mean(dim=1)
    return _masked_mean(per_pixel, mask)


def entropy_max_loss(logits: torch.Tensor, labels: torch.Tensor,
                     lam: float = 0.9) -> tuple[torch.Tensor, dict[str, float]]:
    """``(1-λ)·E_in[CE] + λ·E_out[-(1/C) Σ_j log p_j]`` (SPEC §2.1); out = pixels labelled 254.

    Returns the total and the terms ``{"ce", "out", "out_pixels"}`` for the log.
    """
    ce = inlier_cross_entropy(logits, labels)
    out_mask = labels == OUTLIER
    out = uniform_cross_entropy(logits, out_mask)
    total = (1.0 - lam) * ce + lam * out
    return total, {"ce": float(ce.detach()), "out": float(out.detach()), "out_pixels": float(out_mask.sum())}


# --- NFlowJS and RPL/CoroCL losses (SPEC §2.2, §2.3) ---

def js_to_uniform(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel ``JS(U, softmax(l/T))`` in nats, logits (B,C,H,W) → (B,H,W), values in ``[0, log 2]``.

    ``JS(P,Q) = ½KL(P‖M) + ½KL(Q‖M)``, ``M = (P+Q)/2``; differentiable (the NFlowJS ``L_neg``).
    """
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_u = -math.log(logits.shape[1])
    log_m = torch.logaddexp(log_p, torch.full_like(log_p, log_u)) - math.log(2.0)
    kl_p_m = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_u_m = (log_u - log_m).mean(1)
    return 0.5 * (kl_u_m + kl_p_m)


def nflowjs_loss(logits: torch.Tensor, labels: torch.Tensor, nll: torch.Tensor, lam: float = 3e-2,
                 class_weights: torch.Tensor | None = None,
                 normalizer=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NFlowJS ``L_disc + L_gen`` (SPEC §2.2) of a batch with flow samples pasted at label 254.

    With ``n`` inlier pixels, ``N`` = inlier + pasted pixels and ``CE`` the (class-weighted,
    :func:`bootstrapped_cross_entropy`) mean over inlier pixels:
    ``disc = (CE·n + λ·Σ_pasted JS(U, p)) / N`` and ``gen = Σ nll / N`` (``nll`` (B,) nats of the
    inlier crops the flow fits); the JS term is counted once and reaches both networks.
    ``normalizer``, optional: maps each (detached) per-process total (weights, ``n``, ``N``) to the
    divisor, e.g. its mean over DDP ranks, so that DDP's gradient average is the loss of the global batch.
    Returns ``(disc + gen, {"ce", "js" (mean over pasted pixels), "disc", "gen" (incl. the JS term)})``.
    """
    count = normalizer or (lambda total: total)
    inlier, pasted = inlier_mask(labels, logits.shape[1]), labels == OUTLIER
    ce = bootstrapped_cross_entropy(logits, labels, 1.0, class_weights, normalizer)[0]
    inlier_count = count(inlier.sum().to(logits.dtype))
    pixels = count((inlier.sum() + pasted.sum()).to(logits.dtype)).clamp(min=1)
    js = js_to_uniform(logits)[pasted]
    js_sum = js.sum()
    disc = (ce * inlier_count + lam * js_sum) / pixels
    gen = nll.sum() / pixels
    terms = {"ce": ce.detach(), "js": js.detach().mean() if js.numel() else torch.zeros(()),
             "disc": disc.detach(), "gen": (gen + lam * js_sum / pixels).detach()}
    return disc + gen, terms


def pixel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel softmax entropy ``-Σ p log p`` in nats, (B,C,H,W) → (B,H,W)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


def rpl_inlier_loss(rpl_logits: torch.Tensor, vanilla_logits: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RPL on inlier pixels: ``(mean CE(rpl, argmax vanilla), mean (H(rpl) - H(vanilla))²)`` over ``mask`` (B,H,W)."""
    pseudo_label = vanilla_logits.argmax(1)
    ce = _masked_mean(F.cross_entropy(rpl_logits, pseudo_label, reduction="none"), mask)
    entropy_gap = pixel_entropy(rpl_logits) - pixel_entropy(vanilla_logits).detach()
    return ce, _masked_mean(entropy_gap * entropy_gap, mask)


def rpl_inlier_energy_loss(rpl_logits: torch.Tensor, vanilla_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` (B,H,W) of ``(logsumexp(rpl) - logsumexp(vanilla))²`` (vanilla detached).

    CE to the pseudo-label and the entropy gap are both blind to adding the same constant to every
    class logit, so without this anchor the residual can lower the free energy of every pixel at once
    (what :func:`rpl_outlier_loss` asks for on outliers) and the ``energy`` score stops separating.
    """
    gap = torch.logsumexp(rpl_logits, dim=1) - torch.logsumexp(vanilla_logits, dim=1).detach()
    return _masked_mean(gap * gap, mask)


def rpl_outlier_loss(rpl_logits: torch.Tensor, mask: torch.Tensor, weight: float = 0.05) -> torch.Tensor:
    """RPL on outlier pixels: ``weight · mean ReLU(logsumexp(rpl))`` over ``mask`` (pushes the energy ``-lse`` up to ≥ 0)."""
    return weight * _masked_mean(F.relu(torch.logsumexp(rpl_logits, dim=1)), mask)


def supervised_infonce(anchors: torch.Tensor, anchor_labels: torch.Tensor, others: torch.Tensor,
                       other_labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised InfoNCE (SupCon, "L_out") of anchor embeddings against a contrast set.

    The contrast set is the anchors themselves plus ``others``; embeddings are L2-normalised.
    For anchor i with positives P(i) (same label, i itself excluded):
    ``ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log(exp(a_i·c_p/τ) / Σ_{k≠i} exp(a_i·c_k/τ))``; the loss is the
    mean over anchors with at least one positive (an attached zero when there are none).

    Args:
        anchors: (N, R) embeddings; anchor_labels: (N,) ints.
        others: (M, R) further contrast embeddings (M may be 0); other_labels: (M,).
    """
    anchors = F.normalize(anchors, dim=1)
    contrast = torch.cat([anchors, F.normalize(others, dim=1)])
    labels = torch.cat([anchor_labels, other_labels])
    similarity = anchors @ contrast.T / temperature
    not_self = torch.ones_like(similarity, dtype=torch.bool)
    not_self[:, : anchors.shape[0]].fill_diagonal_(False)
    log_denominator = torch.logsumexp(similarity.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    positive = (anchor_labels[:, None] == labels[None, :]) & not_self
    count = positive.sum(1)
    log_ratio = torch.where(positive, similarity - log_denominator, torch.zeros_like(similarity))
    per_anchor = -log_ratio.sum(1) / count.clamp(min=1)
    return _masked_mean(per_anchor, count > 0)
