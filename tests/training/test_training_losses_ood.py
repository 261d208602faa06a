"""NFlowJS and RPL/CoroCL losses against scipy/numpy references and hand-computed values."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp, softmax
from scipy.stats import entropy

from oodseg.training.losses import (js_to_uniform, nflowjs_loss, pixel_entropy, rpl_inlier_energy_loss,
                                    rpl_inlier_loss, rpl_outlier_loss, supervised_infonce)


def _pixels(logits: np.ndarray) -> np.ndarray:
    """(B,C,H,W) → (B·H·W, C)."""
    return logits.transpose(0, 2, 3, 1).reshape(-1, logits.shape[1])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_js_to_uniform_matches_scipy(rng, temperature):
    logits = rng.normal(0, 4, size=(2, 7, 5, 6))
    got = js_to_uniform(torch.tensor(logits), temperature).numpy().reshape(-1)
    probs = softmax(_pixels(logits) / temperature, axis=1)
    uniform = np.full(7, 1 / 7)
    expected = np.array([jensenshannon(uniform, p) ** 2 for p in probs])  # natural log by default
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_js_to_uniform_range_and_extremes(rng):
    logits = torch.tensor(rng.normal(0, 30, size=(3, 19, 8, 8)), dtype=torch.float32)
    js = js_to_uniform(logits)
    assert js.shape == (3, 8, 8)
    assert float(js.min()) >= 0 and float(js.max()) <= math.log(2) + 1e-6
    assert float(js_to_uniform(torch.zeros(1, 19, 2, 2)).abs().max()) < 1e-7  # uniform softmax
    # one-hot prediction, 2 classes: JS(U, (1,0)) = ½KL(U‖M) + ½KL(δ‖M), M = (3/4, 1/4)
    hand = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    peaked = js_to_uniform(torch.tensor([[[[100.0]], [[-100.0]]]], dtype=torch.float64))
    assert float(peaked) == pytest.approx(hand, abs=1e-12)


def test_js_to_uniform_gradient_is_exact():
    logits = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: js_to_uniform(x, 2.0), (logits,))


def test_pixel_entropy_matches_scipy(rng):
    logits = rng.normal(0, 3, size=(2, 6, 4, 3))
    got = pixel_entropy(torch.tensor(logits)).numpy().reshape(-1)
    np.testing.assert_allclose(got, entropy(softmax(_pixels(logits), axis=1), axis=1), rtol=1e-10)


def test_rpl_inlier_loss_hand_computed(rng):
    rpl = rng.normal(0, 2, size=(2, 4, 3, 5))
    vanilla = rng.normal(0, 2, size=(2, 4, 3, 5))
    mask = rng.random((2, 3, 5)) < 0.6
    ce, mse = rpl_inlier_loss(torch.tensor(rpl), torch.tensor(vanilla), torch.tensor(mask))
    rp, vp, m = _pixels(rpl), _pixels(vanilla), mask.reshape(-1)
    target = vp.argmax(1)
    log_softmax = rp - logsumexp(rp, axis=1, keepdims=True)
    ce_ref = -log_softmax[np.arange(len(rp)), target][m].mean()
    h_r, h_v = entropy(softmax(rp, axis=1), axis=1), entropy(softmax(vp, axis=1), axis=1)
    mse_ref = ((h_r - h_v) ** 2)[m].mean()
    assert float(ce) == pytest.approx(ce_ref, rel=1e-10)
    assert float(mse) == pytest.approx(mse_ref, rel=1e-10)


def test_rpl_inlier_loss_gradient_only_through_rpl_logits():
    rpl = torch.randn(1, 3, 2, 2, requires_grad=True)
    vanilla = torch.randn(1, 3, 2, 2, requires_grad=True)
    ce, mse = rpl_inlier_loss(rpl, vanilla, torch.ones(1, 2, 2, dtype=torch.bool))
    (ce + mse).backward()
    assert rpl.grad.abs().sum() > 0
    assert vanilla.grad is None or float(vanilla.grad.abs().sum()) == 0.0


def test_rpl_outlier_loss_hand_computed():
    # pixel A: logits (0, 0) → lse = log 2 > 0; pixel B: (-5, -6) → lse < 0 → ReLU 0; pixel C not an outlier
    logits = torch.tensor([[[[0.0, -5.0, 9.0]], [[0.0, -6.0, 9.0]]]])
    mask = torch.tensor([[[True, True, False]]])
    expected = 0.05 * (math.log(2) + 0.0) / 2
    assert float(rpl_outlier_loss(logits, mask)) == pytest.approx(expected, rel=1e-6)
    empty = rpl_outlier_loss(logits.requires_grad_(), torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def _supcon_reference(anchors, anchor_labels, others, other_labels, tau):
    """Brute-force loop over anchors (numpy)."""
    normalize = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    a = normalize(anchors)
    c = np.concatenate([a, normalize(others)]) if len(others) else a
    labels = np.concatenate([anchor_labels, other_labels])
    losses = []
    for i in range(len(a)):
        others_idx = [k for k in range(len(c)) if k != i]
        sims = {k: float(a[i] @ c[k]) / tau for k in others_idx}
        log_den = math.log(sum(math.exp(s) for s in sims.values()))
        positives = [k for k in others_idx if labels[k] == anchor_labels[i]]
        if positives:
            losses.append(-sum(sims[k] - log_den for k in positives) / len(positives))
    return float(np.mean(losses)) if losses else 0.0


def test_supervised_infonce_matches_brute_force(rng):
    anchors, others = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    anchor_labels, other_labels = rng.integers(0, 2, 9), rng.integers(0, 2, 7)
    got = supervised_infonce(torch.tensor(anchors), torch.tensor(anchor_labels), torch.tensor(others),
                             torch.tensor(other_labels), temperature=0.1)
    assert float(got) == pytest.approx(_supcon_reference(anchors, anchor_labels, others, other_labels, 0.1),
                                       rel=1e-9)


def test_supervised_infonce_without_extra_contrast_and_without_positives(rng):
    anchors = rng.normal(size=(5, 4))
    labels = np.array([0, 0, 1, 1, 2])  # the lone label-2 anchor has no positive and is skipped
    got = supervised_infonce(torch.tensor(anchors), torch.tensor(labels), torch.zeros(0, 4, dtype=torch.float64),
                             torch.zeros(0, dtype=torch.long), temperature=0.5)
    assert float(got) == pytest.approx(_supcon_reference(anchors, labels, np.zeros((0, 4)), np.zeros(0, int), 0.5),
                                       rel=1e-9)
    lonely = supervised_infonce(torch.randn(2, 3), torch.tensor([0, 1]), torch.zeros(0, 3),
                                torch.zeros(0, dtype=torch.long))
    assert float(lonely) == 0.0


def test_supervised_infonce_prefers_clustered_embeddings():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3) + 0.01 * torch.randn(6, 2)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3) + 0.01 * torch.randn(6, 2)
    empty = torch.zeros(0, 2)
    none = torch.zeros(0, dtype=torch.long)
    assert float(supervised_infonce(clustered, labels, empty, none)) < float(supervised_infonce(mixed, labels, empty, none))


def test_rpl_inlier_energy_loss_matches_scipy(rng):
    rpl = rng.normal(0, 2, size=(2, 4, 3, 5))
    vanilla = rng.normal(0, 2, size=(2, 4, 3, 5))
    mask = rng.random((2, 3, 5)) < 0.6
    got = rpl_inlier_energy_loss(torch.tensor(rpl), torch.tensor(vanilla), torch.tensor(mask))
    gap = logsumexp(_pixels(rpl), axis=1) - logsumexp(_pixels(vanilla), axis=1)
    assert float(got) == pytest.approx((gap ** 2)[mask.reshape(-1)].mean(), rel=1e-10)


def test_only_the_energy_anchor_sees_a_class_uniform_logit_shift(rng):
    """The RPL failure it prevents: lowering every class logit by c leaves CE to the pseudo-label and the
    entropy gap unchanged (so nothing stops the residual from lowering every pixel's energy), but costs c²."""
    vanilla = torch.tensor(rng.normal(0, 2, size=(1, 5, 4, 4)))
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    shifted = vanilla - 3.0
    ce, entropy_gap = rpl_inlier_loss(shifted, vanilla, mask)
    ce_ref, _ = rpl_inlier_loss(vanilla, vanilla, mask)
    assert float(ce) == pytest.approx(float(ce_ref), rel=1e-12) and float(entropy_gap) < 1e-20
    assert float(rpl_inlier_energy_loss(shifted, vanilla, mask)) == pytest.approx(9.0, rel=1e-12)
    assert float(rpl_inlier_energy_loss(vanilla, vanilla, mask)) == 0.0


def _nflowjs_batch(rng, batch=2):
    logits = torch.tensor(rng.normal(0, 2, size=(batch, 4, 3, 5)))
    labels = torch.tensor(rng.integers(0, 4, size=(batch, 3, 5)))
    labels[0, 0, :3] = 254  # a pasted flow sample
    labels[0, 2, 4] = 255
    labels[1, 1:, 2:4] = 254
    labels[1, 0, :2] = 255  # the second image has other inlier / pasted / void counts
    return logits, labels, torch.tensor(rng.uniform(10, 20, size=batch))


@pytest.mark.parametrize("weighted", [False, True])
def test_nflowjs_loss_hand_computed(rng, weighted):
    logits, labels, nll = _nflowjs_batch(rng)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64) if weighted else None
    loss, terms = nflowjs_loss(logits, labels, nll, lam=0.3, class_weights=weights)
    probs = softmax(_pixels(logits.numpy()), axis=1)
    flat = labels.numpy().reshape(-1)
    inlier, pasted = flat < 4, flat == 254
    w = weights.numpy()[flat[inlier]] if weighted else np.ones(inlier.sum())
    ce = np.sum(w * -np.log(probs[inlier, flat[inlier]])) / w.sum()
    js = np.array([jensenshannon(np.full(4, 0.25), p) ** 2 for p in probs[pasted]])
    pixels = inlier.sum() + pasted.sum()
    disc = (ce * inlier.sum() + 0.3 * js.sum()) / pixels
    gen = nll.numpy().sum() / pixels
    assert float(loss) == pytest.approx(disc + gen, rel=1e-10)
    assert float(terms["disc"]) == pytest.approx(disc, rel=1e-10)
    assert float(terms["gen"]) == pytest.approx(gen + 0.3 * js.sum() / pixels, rel=1e-10)
    assert float(terms["js"]) == pytest.approx(js.mean(), rel=1e-10)
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_nflowjs_loss_with_a_rank_mean_normalizer_averages_to_the_global_loss(rng, weighted):
    # two "ranks" with different pixel counts: DDP averages their gradients, so the mean of their
    # losses must be the loss of the whole batch when every total is divided by its mean over ranks
    logits, labels, nll = _nflowjs_batch(rng)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64) if weighted else None
    halves = [(logits[i:i + 1], labels[i:i + 1], nll[i:i + 1]) for i in range(2)]
    seen = [[], []]
    for rank, half in enumerate(halves):  # the totals each rank hands to the all-reduce, in call order
        nflowjs_loss(*half, 0.3, weights, normalizer=lambda total, rank=rank: seen[rank].append(total) or total)
    means = [(a + b) / 2 for a, b in zip(*seen)]
    per_rank = []
    for half in halves:
        calls = iter(means)
        per_rank.append(nflowjs_loss(*half, 0.3, weights, normalizer=lambda total: next(calls))[0])
    whole, _ = nflowjs_loss(logits, labels, nll, 0.3, weights)
    assert float((per_rank[0] + per_rank[1]) / 2) == pytest.approx(float(whole), rel=1e-12)
    assert float(per_rank[0] + per_rank[1]) / 2 != pytest.approx(
        float(sum(nflowjs_loss(*half, 0.3, weights)[0] for half in halves)) / 2, rel=1e-6)  # own divisors differ
