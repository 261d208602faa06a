"""Cross entropy and entropy-maximisation losses against numpy and hand-computed values."""
import math

import numpy as np
import pytest
import torch

from oodseg.training.losses import entropy_max_loss, inlier_cross_entropy, uniform_cross_entropy


def _log_softmax_np(logits: np.ndarray) -> np.ndarray:
    """(B,C,H,W) -> log softmax over C, in float64."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_inlier_cross_entropy_matches_numpy_loop(rng):
    logits = rng.normal(size=(2, 5, 4, 3)) * 3
    labels = rng.integers(0, 5, size=(2, 4, 3))
    labels[0, 0, :] = 255
    labels[1, 2, 1] = 254
    logp = _log_softmax_np(logits)
    terms = [-logp[b, labels[b, i, j], i, j] for b in range(2) for i in range(4) for j in range(3) if labels[b, i, j] < 5]
    got = inlier_cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
    assert float(got) == pytest.approx(np.mean(terms), rel=1e-12)


def test_uniform_cross_entropy_is_ce_against_uniform_label(rng):
    logits = rng.normal(size=(1, 7, 3, 3))
    mask = rng.random((1, 3, 3)) < 0.5
    logp = _log_softmax_np(logits)
    expected = np.mean([-logp[0, :, i, j].mean() for i in range(3) for j in range(3) if mask[0, i, j]])
    got = uniform_cross_entropy(torch.tensor(logits), torch.tensor(mask))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # = KL(U || p) + log C per pixel
    kl = np.mean([np.sum((1 / 7) * (np.log(1 / 7) - logp[0, :, i, j])) for i in range(3) for j in range(3) if mask[0, i, j]])
    assert float(got) == pytest.approx(kl + math.log(7), rel=1e-12)


def test_uniform_cross_entropy_minimal_at_uniform_softmax(rng):
    num_classes = 19
    uniform = torch.full((1, num_classes, 1, 1), 2.5, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    value = uniform_cross_entropy(uniform, mask)
    assert float(value.detach()) == pytest.approx(math.log(num_classes), rel=1e-12)
    value.backward()
    assert torch.allclose(uniform.grad, torch.zeros_like(uniform.grad), atol=1e-15)
    for _ in range(20):
        perturbed = uniform.detach() + torch.tensor(rng.normal(size=(1, num_classes, 1, 1)))
        assert float(uniform_cross_entropy(perturbed, mask)) > math.log(num_classes)


def test_entropy_max_loss_hand_computed():
    # inlier pixel: logits (0, log 3) -> p = (1/4, 3/4), label 1 -> CE = -log(3/4)
    # outlier pixel: logits (0, 0) -> uniform -> -(1/2)(log 1/2 + log 1/2) = log 2
    # ignored pixel: anything
    logits = torch.tensor([[[[0.0, 0.0, 5.0]], [[math.log(3.0), 0.0, -5.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[1, 254, 255]]])
    total, terms = entropy_max_loss(logits, labels, lam=0.9)
    expected = 0.1 * -math.log(0.75) + 0.9 * math.log(2.0)
    assert float(total) == pytest.approx(expected, rel=1e-12)
    assert terms["ce"] == pytest.approx(-math.log(0.75))
    assert terms["out"] == pytest.approx(math.log(2.0))
    assert terms["out_pixels"] == 1


def test_entropy_max_loss_without_outlier_pixels_is_scaled_ce_and_differentiable(rng):
    logits = torch.tensor(rng.normal(size=(2, 4, 3, 3)), requires_grad=True)
    labels = torch.tensor(rng.integers(0, 4, size=(2, 3, 3)))
    total, terms = entropy_max_loss(logits, labels, lam=0.9)
    assert terms["out"] == 0.0 and terms["out_pixels"] == 0
    assert float(total.detach()) == pytest.approx(0.1 * float(inlier_cross_entropy(logits, labels).detach()), rel=1e-12)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_entropy_max_gradient_matches_autograd_of_explicit_formula(rng):
    logits = torch.tensor(rng.normal(size=(1, 3, 2, 2)), requires_grad=True)
    labels = torch.tensor([[[0, 254], [2, 254]]])
    total, _ = entropy_max_loss(logits, labels, lam=0.3)
    (grad,) = torch.autograd.grad(total, logits)
    explicit = logits.detach().clone().requires_grad_(True)
    logp = torch.log(torch.softmax(explicit, dim=1))
    ce = -(logp[0, 0, 0, 0] + logp[0, 2, 1, 0]) / 2
    out = -(logp[0, :, 0, 1].sum() + logp[0, :, 1, 1].sum()) / (3 * 2)
    ((1 - 0.3) * ce + 0.3 * out).backward()
    assert torch.allclose(grad, explicit.grad, atol=1e-12)
