"""Bootstrapped (hard-pixel) cross entropy against a hand-computed case and a numpy sort."""
import math

import numpy as np
import pytest
import torch

from oodseg.training.losses import bootstrapped_cross_entropy, inlier_cross_entropy


def test_hand_computed_two_class_case():
    # 2 classes, 1x5 pixels; logits (0, d) give CE(y=0) = log(1 + e^d), CE(y=1) = log(1 + e^-d)
    d = np.array([2.0, -1.0, 0.0, 3.0, 1.0])
    logits = torch.tensor(np.stack([np.zeros(5), d])[None, :, None, :])  # (1, 2, 1, 5)
    labels = torch.tensor([[[0, 0, 1, 255, 254]]])  # three inlier pixels
    ce = [math.log(1 + math.e ** 2), math.log(1 + math.e ** -1), math.log(2)]  # 2.1269, 0.3133, 0.6931
    hard, plain = bootstrapped_cross_entropy(logits, labels, hard_fraction=0.5)  # ceil(1.5) = 2 hardest
    assert float(hard) == pytest.approx((ce[0] + ce[2]) / 2, rel=1e-12)
    assert float(plain) == pytest.approx(sum(ce) / 3, rel=1e-12)
    hard, _ = bootstrapped_cross_entropy(logits, labels, hard_fraction=0.2)  # ceil(0.6) = 1 pixel
    assert float(hard) == pytest.approx(ce[0], rel=1e-12)


def test_matches_numpy_sort_and_full_fraction_is_plain_ce(rng):
    logits = torch.tensor(rng.normal(size=(2, 6, 5, 7)) * 2)
    labels = torch.tensor(rng.integers(0, 6, size=(2, 5, 7)))
    labels[0, :2] = 255
    labels[1, 3, :4] = 254
    logp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    lab = labels.numpy()
    ce = np.array([-logp[b, lab[b, i, j], i, j] for b in range(2) for i in range(5) for j in range(7) if lab[b, i, j] < 6])
    for fraction in (0.1, 0.25, 0.7):
        k = math.ceil(fraction * ce.size)
        hard, plain = bootstrapped_cross_entropy(logits, labels, fraction)
        assert float(hard) == pytest.approx(np.sort(ce)[::-1][:k].mean(), rel=1e-12)
        assert float(plain) == pytest.approx(ce.mean(), rel=1e-12)
    hard, plain = bootstrapped_cross_entropy(logits, labels, 1.0)
    assert float(hard) == float(plain) == pytest.approx(float(inlier_cross_entropy(logits, labels)), rel=1e-12)


def test_gradient_reaches_only_the_hard_pixels_and_empty_batches_give_zero():
    logits = torch.tensor([[[[0.0, 0.0, 0.0, 0.0]], [[3.0, -4.0, 1.0, 0.5]]]], dtype=torch.float64, requires_grad=True)  # (1,2,1,4)
    labels = torch.tensor([[[0, 1, 1, 0]]])  # CE 3.05, 4.02, 0.31, 0.97: pixels 1, 0 hardest
    hard, _ = bootstrapped_cross_entropy(logits, labels, 0.5)
    hard.backward()
    assert float(hard.detach()) == pytest.approx((math.log(1 + math.e ** 3) + math.log(1 + math.e ** 4)) / 2, rel=1e-12)
    touched = logits.grad.abs().sum(1)[0, 0] > 0
    assert touched.tolist() == [True, True, False, False]
    empty, plain = bootstrapped_cross_entropy(logits, torch.full((1, 1, 4), 255), 0.25)
    assert float(empty.detach()) == 0.0 and float(plain.detach()) == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="hard_fraction"):
        bootstrapped_cross_entropy(logits, labels, 0.0)
