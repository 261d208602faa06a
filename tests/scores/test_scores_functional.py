"""Logit- and feature-based scores against independent numpy/scipy references; registry and compute."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp, softmax
from scipy.stats import entropy as scipy_entropy

from oodseg import scores
from oodseg.adapter import SegOutput
from oodseg.errors import OodsegError
from oodseg.scores import base, functional

LOGIT_ONLY = ["msp", "entropy", "variation_ratio", "margin", "max_logit", "energy", "jsd"]


def _logits(rng, shape=(2, 6, 5, 7), scale=3.0):
    return torch.from_numpy(rng.normal(size=shape) * scale).float()


def _head(rng, batch=2, classes=6, dim=8, height=5, width=7):
    features = torch.from_numpy(np.abs(rng.normal(size=(batch, dim, height, width))) * 2).float()
    weight = torch.from_numpy(rng.normal(size=(classes, dim))).float()
    bias = torch.from_numpy(rng.normal(size=classes)).float()
    logits = torch.einsum("cd,bdhw->bchw", weight, features) + bias.view(1, -1, 1, 1)
    return SegOutput(logits=logits, features=features, weight=weight, bias=bias)


def _np(t):
    return t.detach().double().numpy()


def _reference_logit_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    probs = softmax(logits, axis=1)
    ordered = np.sort(probs, axis=1)
    num_classes = logits.shape[1]
    tempered = softmax(logits / 2.0, axis=1)
    uniform = np.full_like(tempered, 1.0 / num_classes)
    return {
        "msp": 1 - probs.max(axis=1),
        "entropy": scipy_entropy(probs, axis=1) / math.log(num_classes),
        "variation_ratio": 1 - np.take_along_axis(probs, logits.argmax(axis=1)[:, None], 1)[:, 0],
        "margin": 1 - ordered[:, -1] + ordered[:, -2],
        "max_logit": -logits.max(axis=1),
        "energy": -logsumexp(logits, axis=1),
        "jsd": -jensenshannon(uniform, tempered, axis=1) ** 2,
    }


@pytest.mark.parametrize("name", LOGIT_ONLY)
def test_logit_scores_match_numpy(rng, name, logit_path):
    logits = _logits(rng)
    expected = _reference_logit_scores(_np(logits))[name]
    got = getattr(functional, name)(logits=logits)
    assert got.shape == (2, 5, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=2e-6)


def test_temperatures_match_numpy(rng, logit_path):
    logits = _logits(rng)
    x = _np(logits)
    np.testing.assert_allclose(functional.energy(logits=logits, temperature=3.0).numpy(),
                               -3.0 * logsumexp(x / 3.0, axis=1), rtol=1e-5)
    tempered = softmax(x / 5.0, axis=1)
    np.testing.assert_allclose(functional.jsd(logits=logits, temperature=5.0).numpy(),
                               -jensenshannon(np.full_like(tempered, 1 / 6), tempered, axis=1) ** 2, atol=2e-6)


def test_margin_with_tied_maximum(logit_path):
    logits = torch.tensor([3.0, 3.0, -1.0]).view(1, 3, 1, 1)
    assert functional.margin(logits=logits).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", LOGIT_ONLY)
def test_extreme_logits_stay_finite(rng, name, logit_path):
    logits = torch.from_numpy(rng.choice([-1e4, 1e4, 0.0], size=(2, 19, 4, 4))).float()
    logits[0, :, 0, 0] = 1e4  # all classes tied at the extreme
    got = getattr(functional, name)(logits=logits)
    assert torch.isfinite(got).all()
    expected = _reference_logit_scores(_np(logits))[name]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def _reference_normalized(out: SegOutput, include_bias=False, delta=0.0, eta=1.0):
    z, w, b = _np(out.features), _np(out.weight), _np(out.bias)
    scores = np.einsum("cd,bdhw->bchw", w, z) + (b[None, :, None, None] if include_bias else 0)
    omega = np.linalg.norm(w, axis=1)
    scores = scores * omega[None, :, None, None] ** (eta - 1)
    return scores / np.linalg.norm(z, axis=1)[:, None] ** (1 - delta)


@pytest.mark.parametrize("include_bias", [False, True])
@pytest.mark.parametrize("delta", [0.0, 0.3, 1.0])
def test_normalized_scores_match_numpy(rng, include_bias, delta):
    out = _head(rng)
    s = _reference_normalized(out, include_bias, delta)
    kw = dict(features=out.features, weight=out.weight, bias=out.bias, include_bias=include_bias, delta=delta)
    np.testing.assert_allclose(functional.n_max_logit(**kw).numpy(), -s.max(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(functional.n_energy(**kw).numpy(), -logsumexp(s, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(functional.n_energy(**kw, temperature=2.0).numpy(),
                               -2.0 * logsumexp(s / 2.0, axis=1), rtol=1e-5, atol=1e-5)
    s_cw = _reference_normalized(out, include_bias, delta, eta=1.5)
    np.testing.assert_allclose(functional.n_energy_cw(**kw).numpy(), -logsumexp(s_cw, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(functional.feature_norm(features=out.features).numpy(),
                               -np.linalg.norm(_np(out.features), axis=1), rtol=1e-6)


def test_normalized_scores_invariant_to_feature_scale(rng):
    out = _head(rng)
    scaled = SegOutput(logits=out.logits * 7.5, features=out.features * 7.5, weight=out.weight, bias=out.bias)
    for name in ("n_max_logit", "n_energy", "n_energy_cw"):
        np.testing.assert_allclose(scores.get(name)(scaled).numpy(), scores.get(name)(out).numpy(), rtol=1e-5, atol=1e-6)
    # and not the un-normalised ones (the test can fail)
    assert not torch.allclose(scores.get("energy")(scaled), scores.get("energy")(out))


def test_n_energy_cw_with_eta_one_is_n_energy(rng):
    out = _head(rng)
    np.testing.assert_allclose(scores.get("n_energy_cw", eta=1.0)(out).numpy(), scores.get("n_energy")(out).numpy(),
                               rtol=1e-6)
    assert not torch.allclose(scores.get("n_energy_cw", eta=1.5)(out), scores.get("n_energy")(out))


def test_zero_features_stay_finite(rng):
    out = _head(rng)
    out.features[:, :, 0, 0] = 0
    for name in ("feature_norm", "n_max_logit", "n_energy", "n_energy_cw", "pgn"):
        assert torch.isfinite(scores.get(name)(out)).all(), name


def test_compute_equals_each_scorer_alone_and_tiles(rng, monkeypatch, logit_path):
    monkeypatch.setattr(base, "TILE_PIXELS", 8)  # several tiles of one row (width 7 → 1 row per tile)
    out = _head(rng, height=9, width=7)
    chosen = [scores.get(n) for n in LOGIT_ONLY + ["feature_norm", "n_max_logit", "n_energy", "n_energy_cw"]]
    chosen += [scores.get("pgn", p=p, label=lab) for p in (0.1, 2.0) for lab in ("onehot", "uniform")]
    together = scores.compute(chosen, out)
    assert list(together) == [s.key for s in chosen] and len(set(together)) == len(chosen)
    monkeypatch.setattr(base, "TILE_PIXELS", 1 << 20)  # one tile
    for scorer in chosen:
        alone = scorer(out)
        torch.testing.assert_close(together[scorer.key], alone, rtol=1e-5, atol=1e-6)
    expected = _reference_logit_scores(_np(out.logits))
    for name in LOGIT_ONLY:
        np.testing.assert_allclose(together[name].numpy(), expected[name], rtol=1e-5, atol=2e-6)


def test_kernel_equals_torch_on_awkward_layouts(rng, monkeypatch, kernel_built):
    """Batch > 1, sizes that are no multiple of the kernel's block, channels-last and row-tile views, ties."""
    from oodseg.scores import native
    from oodseg.scores.shared import ScoreInputs

    logits = _logits(rng, shape=(3, 5, 17, 31)).round()  # rounding makes tied maxima common
    views = [logits, logits.contiguous(memory_format=torch.channels_last), logits[:, :, 3:9]]
    names = ["max_logit", "argmax", "top2"]
    for view in views:
        kernel = ScoreInputs(SegOutput(logits=view))
        with monkeypatch.context() as patch:
            patch.setattr(native, "library", lambda: None)
            reference = ScoreInputs(SegOutput(logits=view))
            expected = {n: getattr(reference, n) for n in names}
            for t in (1.0, 2.0, 0.7):
                expected[t] = (reference.exp_sum(t), reference.softmax_entropy(t), reference.mixture_entropy(t))
        assert kernel._native and not reference._native
        for n in names:
            torch.testing.assert_close(getattr(kernel, n), expected[n], rtol=0, atol=0)
        for t in (1.0, 2.0, 0.7):
            got = (kernel.exp_sum(t), kernel.softmax_entropy(t), kernel.mixture_entropy(t))
            torch.testing.assert_close(got, expected[t], rtol=1e-5, atol=1e-6)


def test_every_available_name_is_reachable(rng):
    names = scores.available()
    assert len(names) == 23 and set(LOGIT_ONLY) <= set(names)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
    for name in names:
        scorer = scores.get(name, models=[module]) if name == "ensemble" else scores.get(name)
        assert scorer.name == name and scorer.key == name
        assert scorer.needs <= {"logits", "features", "weight", "block", "model", "fit", "ood_logits",
                                "masks"} and scorer.needs
        assert isinstance(scorer.params, dict)


def test_keys_name_non_default_parameters():
    assert scores.get("pgn", p=0.1, label="uniform").key == "pgn[label=uniform,p=0.1]"
    assert scores.get("pgn", p=0.5).key == "pgn"
    assert scores.get("energy", temperature=1).key == "energy"


@pytest.mark.parametrize("call, message", [
    (lambda: scores.get("nope"), "unknown; available: msp"),
    (lambda: scores.get("energy", t=2), "unknown parameter(s) t; valid: temperature"),
    (lambda: scores.get("msp", x=1), "valid: none"),
    (lambda: scores.get("pgn", variant="approx"), "pgn: variant"),
    (lambda: scores.get("pgn", p=0), "pgn: p"),
    (lambda: scores.get("n_energy", delta=2), "delta"),
    (lambda: scores.get("energy", temperature=-1.0), "temperature"),
])
def test_bad_names_and_parameters(call, message):
    with pytest.raises(OodsegError, match=None) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_inputs_raise_one_line_errors(rng, logit_path):
    out = _head(rng)
    cases = [
        (lambda: functional.msp(logits=out.logits[0]), "logits: expected shape (B, C, h, w)"),
        (lambda: functional.msp(logits=out.logits.numpy()), "logits: expected a tensor"),
        (lambda: functional.msp(logits=out.logits[:, :1]), "at least 2 classes"),
        (lambda: functional.msp(logits=torch.where(out.logits > 1, float("nan"), out.logits)), "NaN or Inf"),
        (lambda: functional.energy(logits=torch.where(out.logits > 1, float("inf"), out.logits)), "NaN or Inf"),
        (lambda: scores.get("n_energy")(SegOutput(logits=out.logits)), "n_energy: needs the input features of a 1×1"),
        (lambda: scores.get("n_energy")(SegOutput(logits=out.logits, features=out.features)), "weight: missing"),
        (lambda: functional.n_energy(features=out.features, weight=out.weight[:, :3]), "weight: shape"),
        (lambda: scores.get("n_energy")(SegOutput(logits=out.logits, features=out.features[..., :3],
                                                  weight=out.weight)), "features: shape"),
        (lambda: functional.pgn(logits=out.logits, features=out.features[:1]), "features: shape"),
        (lambda: functional.feature_norm(features=out.features * float("nan")), "features: contains NaN"),
        (lambda: scores.get("pgn", layer="second_to_last")(out), "SegOutput.block: missing"),
        (lambda: scores.compute(["odin"], out), "odin: runs the model"),
        (lambda: scores.get("sml")(out), "sml: not fitted"),
        (lambda: scores.get("mahalanobis")(out), "mahalanobis: not fitted"),
    ]
    for call, message in cases:
        with pytest.raises(OodsegError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))
        assert "\n" not in str(info.value)
