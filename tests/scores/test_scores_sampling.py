"""Sampling scores (MC dropout, ensemble) through the real ModelAdapter (ODIN: test_scores_perturbation.py)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy
from torch import nn

from oodseg import scores
from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError


def _net(dropout: float, classes: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout), nn.Conv2d(8, classes, 1))


def _images(rng, batch=2, size=(6, 7)):
    return torch.from_numpy(rng.uniform(size=(batch, 3, *size))).float()


def _entropy_of_mean(prob_list):
    mean = np.mean(prob_list, axis=0)
    return scipy_entropy(mean, axis=1) / math.log(mean.shape[1])


def test_mc_dropout_refuses_dropout_layers_that_all_have_p_zero(rng):
    """p=0 everywhere (Swin, BEiT): every pass would be identical and the score would equal entropy."""
    net = nn.Sequential(*_net(0.0), nn.Dropout(0.0))
    with pytest.raises(OodsegError, match=r"^mc_dropout: all 2 dropout layers of the model have p=0"):
        scores.get("mc_dropout", samples=3)(ModelAdapter(net), _images(rng))


def test_mc_dropout_matches_manual_sampling_and_restores_modes(rng):
    net = _net(0.5)
    net.train()
    adapter, images = ModelAdapter(net), _images(rng)
    net[0].eval()  # a mixed state that must come back as it was
    before = [m.training for m in net.modules()]
    got = scores.get("mc_dropout", samples=4, seed=7)(adapter, images)
    mutual = scores.get("mc_dropout", samples=4, seed=7, mutual_information=True)(adapter, images)
    assert [m.training for m in net.modules()] == before
    net.eval()
    net[2].train()
    torch.manual_seed(7)
    with torch.no_grad():
        probs = [softmax(net(images).double().numpy(), axis=1) for _ in range(4)]
    expected = _entropy_of_mean(probs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    expected_mi = expected - np.mean([scipy_entropy(p, axis=1) for p in probs], axis=0) / math.log(5)
    np.testing.assert_allclose(mutual.numpy(), np.maximum(expected_mi, 0), rtol=1e-4, atol=1e-5)
    assert expected_mi.max() > 1e-3  # dropout does make the passes differ


def test_mc_dropout_errors(rng):
    net = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(OodsegError, match="no dropout layers"):
        scores.get("mc_dropout")(ModelAdapter(net), _images(rng))
    with pytest.raises(OodsegError, match="images: expected a tensor of shape"):
        scores.get("mc_dropout")(ModelAdapter(_net(0.1)), _images(rng)[:, :2])
    with pytest.raises(OodsegError, match="samples"):
        scores.get("mc_dropout", samples=0)


def test_ensemble_is_entropy_of_mean_softmax(rng):
    members = [_net(0.0).eval() for _ in range(3)]
    images = _images(rng)
    scorer = scores.get("ensemble", models=[members[0], ModelAdapter(members[1]), members[2]])
    got = scorer(None, images)
    with torch.no_grad():
        probs = [softmax(m(images).double().numpy(), axis=1) for m in members]
    np.testing.assert_allclose(got.numpy(), _entropy_of_mean(probs), rtol=1e-5, atol=1e-6)
    with pytest.raises(OodsegError, match="ensemble: models="):
        scores.get("ensemble")
    with pytest.raises(OodsegError, match="member 1 has 4 classes"):
        scores.get("ensemble", models=[members[0], _net(0.0, classes=4)])(None, images)
