"""PGN against autograd (exact variant), the paper's closed form in numpy (paper variant), both layers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from oodseg import scores
from oodseg.adapter import ModelAdapter, SegOutput
from oodseg.errors import OodsegError

P_VALUES = [0.1, 0.3, 0.5, 1.0, 2.0]


def _pnorm(values: np.ndarray, p: float) -> float:
    return float((np.abs(values) ** p).sum() ** (1 / p))


def _target(logits: torch.Tensor, label: str) -> torch.Tensor:
    """Per-pixel CE target distribution y (C,)."""
    if label == "uniform":
        return torch.full_like(logits, 1.0 / logits.shape[0])
    return F.one_hot(logits.argmax(), logits.shape[0]).to(logits.dtype)


def _pixel_loss(logits: torch.Tensor, label: str) -> torch.Tensor:
    return -(_target(logits.detach(), label) * torch.log_softmax(logits, dim=0)).sum()


@pytest.mark.parametrize("label", ["onehot", "uniform"])
def test_exact_last_layer_equals_autograd(rng, label):
    classes, dim, height, width = 5, 6, 3, 4
    features = torch.from_numpy(rng.normal(size=(1, dim, height, width))).double()
    weight = torch.from_numpy(rng.normal(size=(classes, dim))).double().requires_grad_(True)
    bias = torch.from_numpy(rng.normal(size=classes)).double()
    logits = torch.einsum("cd,bdhw->bchw", weight, features) + bias.view(1, -1, 1, 1)
    out = SegOutput(logits=logits.detach().float(), features=features.float(), weight=weight.detach().float())
    maps = {p: scores.get("pgn", variant="exact", label=label, p=p)(out) for p in P_VALUES}
    for a in range(height):
        for b in range(width):
            (gradient,) = torch.autograd.grad(_pixel_loss(logits[0, :, a, b], label), weight, retain_graph=True)
            for p in P_VALUES:
                assert maps[p][0, a, b].item() == pytest.approx(_pnorm(gradient.numpy(), p), rel=2e-4), (a, b, p)


@pytest.mark.parametrize("label", ["onehot", "uniform"])
def test_paper_last_layer_equals_closed_form(rng, label):
    logits = torch.from_numpy(rng.normal(size=(2, 7, 3, 3)) * 3).float()
    features = torch.from_numpy(np.maximum(rng.normal(size=(2, 9, 3, 3)), 0)).float()
    probs = softmax(logits.double().numpy(), axis=1)
    for p in P_VALUES:
        got = scores.get("pgn", variant="paper", label=label, p=p)(SegOutput(logits=logits, features=features))
        for i, a, b in np.ndindex(2, 3, 3):
            prob = probs[i, :, a, b]
            if label == "onehot":
                g = prob * (np.arange(7) != prob.argmax())  # eq. (7)
            else:
                g = prob * 6 / 7  # eq. (8)
            expected = _pnorm(np.outer(g, features[i, :, a, b].double().numpy()), p)  # the full C×D gradient
            assert got[i, a, b].item() == pytest.approx(expected, rel=2e-4)


def test_variants_differ_and_confident_pixels_stay_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.1, 0.2, 0.3]]).T.reshape(1, 3, 1, 2).contiguous()
    features = torch.ones(1, 4, 1, 2)
    out = SegOutput(logits=logits, features=features)
    for variant in ("paper", "exact"):
        for label in ("onehot", "uniform"):
            for p in P_VALUES:
                value = scores.get("pgn", variant=variant, label=label, p=p)(out)
                assert torch.isfinite(value).all()
                log_value = scores.get("pgn", variant=variant, label=label, p=p, log_scale=True)(out)
                assert torch.isfinite(log_value[:, :, 1]).all()
                torch.testing.assert_close(log_value[:, :, 1].exp(), value[:, :, 1], rtol=1e-5, atol=0)
    exact = scores.get("pgn", variant="exact")(out)[0, 0, 1]
    paper = scores.get("pgn", variant="paper")(out)[0, 0, 1]
    assert exact > paper  # exact adds |p_ĉ - 1| to the one-hot gradient


def test_log_scale_needed_for_overflow():
    logits = torch.zeros(1, 19, 1, 1)
    features = torch.full((1, 4096, 1, 1), 1e3)
    with pytest.raises(OodsegError, match="log_scale=True"):
        scores.get("pgn", p=0.1)(SegOutput(logits=logits, features=features))
    value = scores.get("pgn", p=0.1, log_scale=True)(SegOutput(logits=logits, features=features))
    expected = np.log(_pnorm(np.full(18, 1 / 19), 0.1)) + (np.log(4096) / 0.1 + np.log(1e3))
    assert value.item() == pytest.approx(expected, rel=1e-5)


class _Head(nn.Module):
    """conv k×k → BN (eval, non-trivial statistics and affine) → ReLU → 1×1 classifier."""

    def __init__(self, rng, channels=3, hidden=5, classes=4, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=dilation, dilation=dilation)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU()
        self.classifier = nn.Conv2d(hidden, classes, 1)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.from_numpy(rng.normal(size=hidden) * 0.3))
            self.bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=hidden)))
            self.bn.weight.copy_(torch.from_numpy(rng.normal(size=hidden)))
            self.bn.bias.copy_(torch.from_numpy(rng.normal(size=hidden) * 0.5))
        self.double().eval()

    def forward(self, images):
        return self.classifier(self.relu(self.bn(self.conv(images))))


@pytest.mark.parametrize("dilation", [1, 2])
def test_second_to_last_layer_equals_autograd(rng, dilation):
    net = _Head(rng, dilation=dilation)
    images = torch.from_numpy(rng.uniform(size=(1, 3, 5, 6)))
    adapter = ModelAdapter(net, capture_block=True)
    out = adapter(images)
    assert out.block is not None
    logits = net(images)
    for label in ("onehot", "uniform"):
        maps = {p: scores.get("pgn", variant="exact", label=label, p=p, layer="second_to_last")(out)
                for p in P_VALUES}
        for a in range(5):
            for b in range(6):
                (gradient,) = torch.autograd.grad(_pixel_loss(logits[0, :, a, b], label), net.conv.weight,
                                                  retain_graph=True)
                for p in P_VALUES:
                    expected = _pnorm(gradient.numpy(), p)
                    assert maps[p][0, a, b].item() == pytest.approx(expected, rel=5e-4, abs=1e-30), (label, a, b, p)
    assert maps[2.0].max() > 0


def test_second_to_last_paper_variant_equals_closed_form(rng):
    net = _Head(rng)
    images = torch.from_numpy(rng.uniform(size=(1, 3, 4, 5)))
    out = ModelAdapter(net, capture_block=True)(images)
    x = np.pad(images[0].numpy(), ((0, 0), (1, 1), (1, 1)))
    pre_relu = net.bn(net.conv(images))[0].detach().numpy()
    scale = (net.bn.weight / torch.sqrt(net.bn.running_var + net.bn.eps)).detach().numpy()
    w = net.classifier.weight[:, :, 0, 0].detach().numpy()
    probs = softmax(net(images)[0].detach().numpy(), axis=0)
    for p in (0.5, 2.0):
        got = scores.get("pgn", label="onehot", p=p, layer="second_to_last")(out)
        for a, b in np.ndindex(4, 5):
            prob = probs[:, a, b]
            g = prob * (np.arange(4) != prob.argmax())
            s = (w.T @ g) * (pre_relu[:, a, b] > 0) * scale
            patch = x[:, a:a + 3, b:b + 3]
            assert got[0, a, b].item() == pytest.approx(_pnorm(np.multiply.outer(s, patch), p), rel=2e-4)


def test_second_to_last_checks_block_geometry(rng):
    net = _Head(rng)
    out = ModelAdapter(net, capture_block=True)(torch.from_numpy(rng.uniform(size=(1, 3, 4, 5))))
    out.block.padding = (0, 0)
    with pytest.raises(OodsegError, match="block: conv geometry"):
        scores.get("pgn", layer="second_to_last")(out)


def test_log_scale_maps_a_zero_gradient_to_a_finite_floor():
    from oodseg.scores.gradient import LOG_ZERO_NORM

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, 3, 5, generator=generator)
    features = torch.rand(1, 6, 3, 5, generator=generator)
    features[0, :, 1, 2] = 0  # every unit off: ‖z‖ = 0
    out = SegOutput(logits=logits, features=features)
    plain = scores.get("pgn", p=0.5)(out)
    logged = scores.get("pgn", p=0.5, log_scale=True)(out)
    assert plain[0, 1, 2] == 0 and logged[0, 1, 2] == LOG_ZERO_NORM
    mask = torch.ones_like(plain, dtype=torch.bool)
    mask[0, 1, 2] = False
    assert torch.allclose(logged[mask], torch.log(plain[mask]), atol=1e-5)
    assert bool((logged[mask] > LOG_ZERO_NORM).all())
