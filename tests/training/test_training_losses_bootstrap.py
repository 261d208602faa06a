"""Bootstrapped (hard-pixel) and class-weighted cross entropy against a hand-computed case, a numpy
sort and ``F.cross_entropy(weight=...)``; inverse-frequency weights and label counting by hand."""
import math

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from oodseg.data import open_dataset
from oodseg.data.labels import class_frequencies
from oodseg.errors import OodsegError
from oodseg.training.losses import bootstrapped_cross_entropy, inlier_cross_entropy, inverse_frequency_weights


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


def test_class_weighted_loss_equals_torch_weighted_cross_entropy(rng):
    logits = torch.tensor(rng.normal(size=(2, 5, 4, 6)) * 2, requires_grad=True)
    labels = torch.tensor(rng.integers(0, 5, size=(2, 4, 6)))
    labels[0, 0] = 255
    labels[1, 2, :3] = 254
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.0], dtype=torch.float64)
    loss, plain = bootstrapped_cross_entropy(logits, labels, 1.0, weights)
    reference = F.cross_entropy(logits, torch.where(labels < 5, labels, torch.full_like(labels, -100)), weight=weights)
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
    assert float(plain.detach()) == pytest.approx(float(inlier_cross_entropy(logits, labels).detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_ref,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(grad, grad_ref, atol=1e-12)
    # hard pixels are chosen by their unweighted CE, then averaged with their weights
    ce = F.cross_entropy(logits, torch.where(labels < 5, labels, 0), reduction="none").detach()[labels < 5]
    w = weights[labels[labels < 5]]
    top = torch.argsort(ce, descending=True)[: math.ceil(0.3 * ce.numel())]
    hard, _ = bootstrapped_cross_entropy(logits, labels, 0.3, weights)
    assert float(hard.detach()) == pytest.approx(float((w[top] * ce[top]).sum() / w[top].sum()), rel=1e-12)


def test_inverse_frequency_weights_by_hand():
    freq = np.array([0.64, 0.32, 0.04, 0.0])
    w = inverse_frequency_weights(freq, power=0.5).numpy()
    raw = np.array([1 / 0.8, 1 / np.sqrt(0.32), 1 / 0.2, 0.0])
    assert np.allclose(w, raw / (raw * freq).sum(), rtol=1e-6)
    assert float((w * freq).sum()) == pytest.approx(1.0, rel=1e-6) and w[3] == 0
    assert np.allclose(inverse_frequency_weights(freq * 7, power=0.0).numpy(), [1, 1, 1, 0])
    with pytest.raises(ValueError, match="non-negative"):
        inverse_frequency_weights([0.5, -0.1])
    with pytest.raises(ValueError, match="power"):
        inverse_frequency_weights([0.5, 0.5], power=-1)


def test_class_frequencies_count_every_label_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    counts = np.zeros(4, dtype=np.int64)
    for k in range(3):
        label = rng.choice(np.array([0, 1, 2, 3, 255], dtype=np.uint8), size=(5, 7))
        counts += [(label == c).sum() for c in range(4)]
        Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(images / f"f{k}.png")
        Image.fromarray(label).save(labels / f"f{k}.png")
    dataset = open_dataset("folder", tmp_path, images="images", masks="labels",
                           mapping="0:0,1:1,2:2,3:3,255:255")
    assert np.allclose(class_frequencies(dataset, 4), counts / counts.sum())
    assert np.allclose(class_frequencies(dataset, 2), counts[:2] / counts[:2].sum())
    blank = tmp_path / "blank"
    (blank / "images").mkdir(parents=True), (blank / "labels").mkdir()
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(blank / "images" / "a.png")
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(blank / "labels" / "a.png")
    empty = open_dataset("folder", blank, images="images", masks="labels", mapping="0:0,255:255")
    with pytest.raises(OodsegError, match="no pixel is labelled"):
        class_frequencies(empty, 4)


def test_normalizer_makes_the_mean_of_per_rank_losses_the_global_weighted_mean(rng):
    # two "ranks" with different weight totals: averaging their losses (what DDP does with the
    # gradients) equals the weighted mean of the whole batch when both divide by the mean total
    logits = torch.tensor(rng.normal(size=(2, 4, 3, 5)))
    labels = torch.tensor(rng.integers(0, 4, size=(2, 3, 5)))
    weights = torch.tensor([0.2, 1.0, 3.0, 6.0], dtype=torch.float64)
    totals = [float(weights[labels[i]].sum()) for i in range(2)]
    mean_total = lambda total: torch.tensor(sum(totals) / 2, dtype=total.dtype)  # noqa: E731
    halves = [bootstrapped_cross_entropy(logits[i:i + 1], labels[i:i + 1], 1.0, weights, mean_total)[0]
              for i in range(2)]
    whole, _ = bootstrapped_cross_entropy(logits, labels, 1.0, weights)
    assert float((halves[0] + halves[1]) / 2) == pytest.approx(float(whole), rel=1e-12)


def test_normalizer_without_class_weights_divides_the_plain_ce_by_the_mean_count(rng):
    logits = torch.tensor(rng.normal(size=(2, 4, 3, 5)))
    labels = torch.tensor(rng.integers(0, 4, size=(2, 3, 5)))
    labels[0, :2] = 255  # the ranks have 5 and 15 labelled pixels
    counts = [float((labels[i] != 255).sum()) for i in range(2)]
    mean_count = lambda total: torch.tensor(sum(counts) / 2, dtype=total.dtype)  # noqa: E731
    halves = [bootstrapped_cross_entropy(logits[i:i + 1], labels[i:i + 1], 1.0, None, mean_count)[0] for i in range(2)]
    whole, _ = bootstrapped_cross_entropy(logits, labels, 1.0)
    assert float((halves[0] + halves[1]) / 2) == pytest.approx(float(whole), rel=1e-12)
    # in one process (the normaliser returns the count itself) it is the plain mean, bit for bit
    same, plain = bootstrapped_cross_entropy(logits, labels, 1.0, None, lambda total: total)
    assert torch.equal(same, plain)


@pytest.mark.parametrize("hard_fraction,weights", [(1.0, None), (1.0, [1.0, 2.0, 3.0, 4.0]), (0.25, None)])
def test_normalizer_is_called_even_when_this_rank_has_no_labelled_pixel(hard_fraction, weights):
    # under DDP the normaliser is an all-reduce: a rank that skipped it would hang the others
    logits = torch.randn(1, 4, 3, 5, requires_grad=True)
    labels = torch.full((1, 3, 5), 255)
    calls = []
    loss, plain = bootstrapped_cross_entropy(logits, labels, hard_fraction,
                                             None if weights is None else torch.tensor(weights),
                                             lambda total: calls.append(float(total)) or total + 7.0)
    assert calls == [0.0]
    assert float(loss.detach()) == 0.0 and loss.requires_grad  # an attached zero
