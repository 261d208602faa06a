"""ODIN (``odin``, both variants) against hand-written autograd references in the input spaces the
published codes use: the paper's code steps the *normalised* image by ε·sign(∇CE)/std (facebookresearch/odin),
SMIYC's steps it by ε·sign(∇CE(softmax)) with the opposite sign (road-anomaly-benchmark methods/utils.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from oodseg import scores
from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError

MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float64).view(1, 3, 1, 1)
CLASSES = 5


class _Normalize(nn.Module):
    """[0, 1] RGB → ImageNet-normalised, inside the model as in oodseg's networks."""

    def forward(self, x):
        return (x - MEAN.to(x.dtype)) / STD.to(x.dtype)


def _body(seed=0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, CLASSES, 1)).to(dtype).eval()
    with torch.no_grad():
        body[-1].weight.mul_(4)  # confident, varied predictions
    return body


def _images(rng, dtype=torch.float64, size=(9, 11)):
    return torch.from_numpy(rng.uniform(0.05, 0.95, size=(2, 3, *size))).to(dtype)


def _centered_msp(logits: torch.Tensor, temperature: float) -> np.ndarray:
    """float64 ``1/C - max softmax(l/T)``: the paper's ``1 - max softmax`` minus ``1 - 1/C``."""
    probs = softmax(logits.detach().double().numpy() / temperature, axis=1)
    return 1.0 / logits.shape[1] - probs.max(axis=1)


def _paper_reference(body, images, temperature, epsilon, sign=1.0):
    """Liang et al.'s code: sign of ∇ CE(l/T, argmax) w.r.t. the normalised image, divided by std, step -ε."""
    normalised = ((images - MEAN) / STD).requires_grad_(True)
    logits = body(normalised)
    loss = F.cross_entropy(logits / temperature, logits.argmax(dim=1), reduction="sum")
    (gradient,) = torch.autograd.grad(loss, normalised)
    perturbed = normalised.detach() - sign * epsilon * torch.sign(gradient) / STD
    with torch.no_grad():
        return _centered_msp(body(perturbed), temperature)


def _smiyc_reference(body, images, temperature, epsilon, sign=1.0):
    """SMIYC's code: x_n ← x_n − ε·sign(−∇ CE(softmax(l), argmax)) in the normalised space, then T-scaled MSP."""
    normalised = ((images - MEAN) / STD).requires_grad_(True)
    probs = torch.softmax(body(normalised), dim=1)
    loss = F.cross_entropy(probs, probs.argmax(dim=1))
    (gradient,) = torch.autograd.grad(loss, normalised)
    perturbed = normalised.detach() - sign * epsilon * torch.sign(-gradient)
    with torch.no_grad():
        return _centered_msp(body(perturbed), temperature)


@pytest.mark.parametrize("variant, reference", [("paper", _paper_reference), ("smiyc", _smiyc_reference)])
def test_odin_matches_the_published_code_and_its_sign(rng, variant, reference):
    body = _body()
    adapter, images = ModelAdapter(nn.Sequential(_Normalize(), *body)), _images(rng)
    scorer = scores.get("odin", variant=variant)
    temperature, epsilon = scorer.params["temperature"], scorer.params["epsilon"]
    assert (temperature, epsilon) == {"paper": (1000.0, 0.0014), "smiyc": (3.0, 1e-4)}[variant]
    got = scorer(adapter, images).numpy()
    expected = reference(body, images, temperature, epsilon)
    flipped = reference(body, images, temperature, epsilon, sign=-1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)
    # the step moves almost every pixel's score by more than the tolerance: a flipped sign cannot pass
    assert (np.abs(flipped - got) > 1e-5 * np.abs(got)).mean() > 0.9
    assert all(p.grad is None for p in body.parameters())
    unperturbed = _centered_msp(body(_Normalize()(images)), temperature)
    raised = (expected < unperturbed).mean()  # the paper's step raises the confidence, SMIYC's lowers it
    assert raised > 0.9 if variant == "paper" else raised < 0.1


def test_odin_perturbation_matches_analytic_gradient(rng):
    """Linear model ``l = A x + b`` per pixel: ∇ₓ log max softmax(l/T) = (A_ĉ - qᵀA)/T in closed form."""
    temperature, epsilon = 3.0, 0.05
    net = nn.Sequential(nn.Conv2d(3, 4, 1)).double().eval()
    adapter, images = ModelAdapter(net), torch.from_numpy(rng.uniform(size=(1, 3, 3, 4)))
    got = scores.get("odin", temperature=temperature, epsilon=epsilon)(adapter, images)
    a = net[0].weight[:, :, 0, 0].detach().numpy()
    bias = net[0].bias.detach().numpy()
    x = images[0].numpy()
    expected = np.empty((3, 4))
    for i, j in np.ndindex(3, 4):
        q = softmax((a @ x[:, i, j] + bias) / temperature)
        gradient = (a[q.argmax()] - q @ a) / temperature
        perturbed = x[:, i, j] - epsilon * np.sign(-gradient)
        expected[i, j] = 1 / 4 - softmax((a @ perturbed + bias) / temperature).max()
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-5, atol=1e-9)


def test_odin_score_keeps_float32_resolution_at_T1000(rng):
    """At T=1000 the scores differ in the 4th-6th digit of 1 - 1/C; float32 must keep them (SPEC §7)."""
    body = _body(dtype=torch.float32)
    adapter, images = ModelAdapter(nn.Sequential(_Normalize(), *body)), _images(rng, torch.float32, (24, 32))
    got = scores.get("odin", epsilon=0.0)(adapter, images).numpy()
    with torch.no_grad():
        expected = _centered_msp(body(_Normalize()(images)), 1000.0)  # float64 from the same float32 logits
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)
    assert np.unique(got).size == np.unique(expected).size
    assert got.max() <= 0 and got.min() > -(1 - 1 / CLASSES)


def test_odin_without_perturbation_at_unit_temperature_is_msp_minus_a_constant(rng):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, CLASSES, 1)).eval()
    adapter, images = ModelAdapter(net), _images(rng, torch.float32)
    got = scores.get("odin", temperature=1.0, epsilon=0.0)(adapter, images)
    torch.testing.assert_close(got, scores.get("msp")(adapter(images)) - (1 - 1 / CLASSES), rtol=1e-5, atol=1e-6)


def test_odin_keys_and_bad_parameters():
    assert scores.get("odin").key == "odin"
    assert scores.get("odin", temperature=1000.0, epsilon=0.0014).key == "odin"
    assert scores.get("odin", variant="smiyc").key == "odin[variant=smiyc]"
    assert scores.get("odin", variant="smiyc", temperature=1000.0).key == "odin[temperature=1000.0,variant=smiyc]"
    with pytest.raises(OodsegError, match="odin: variant: 'liang' is not one of 'paper', 'smiyc'"):
        scores.get("odin", variant="liang")
    with pytest.raises(OodsegError, match="odin: epsilon must be a number ≥ 0"):
        scores.get("odin", epsilon=-1)
    with pytest.raises(OodsegError, match="odin: temperature: must be a positive number"):
        scores.get("odin", temperature=0)
