"""SML and Mahalanobis against manual per-class loops and scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance

from oodseg import scores
from oodseg.adapter import SegOutput
from oodseg.errors import OodsegError
from oodseg.scores import functional
from oodseg.scores.fitted import dilated_smoothing, suppress_boundaries


def _outputs(rng, n=3, classes=4, dim=5, size=(6, 7)):
    outs = []
    for _ in range(n):
        features = torch.from_numpy(rng.normal(size=(2, dim, *size))).float()
        logits = torch.from_numpy(rng.normal(size=(2, classes, *size)) * 2).float()
        outs.append(SegOutput(logits=logits, features=features))
    return outs


def test_sml_fit_and_score_match_manual_loop(rng, logit_path):
    outs = _outputs(rng)
    scorer = scores.get("sml").fit(outs)
    values = {c: [] for c in range(4)}
    for out in outs:
        logits = out.logits.double().numpy()
        for i, a, b in np.ndindex(2, 6, 7):
            values[int(logits[i, :, a, b].argmax())].append(logits[i, :, a, b].max())
    mean = np.array([np.mean(values[c]) for c in range(4)])
    std = np.array([np.std(values[c]) for c in range(4)])
    np.testing.assert_allclose(scorer.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(scorer.std.numpy(), std, rtol=1e-4)
    test = outs[0].logits.double().numpy()
    expected = np.empty((2, 6, 7))
    for i, a, b in np.ndindex(2, 6, 7):
        c = test[i, :, a, b].argmax()
        expected[i, a, b] = -(test[i, c, a, b] - mean[c]) / std[c]
    np.testing.assert_allclose(scorer(outs[0]).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(functional.sml(logits=outs[0].logits, class_mean=scorer.mean, class_std=scorer.std).numpy(),
                               expected, rtol=1e-4, atol=1e-5)


def test_sml_by_ground_truth_labels_and_state_dict(rng):
    outs = _outputs(rng, n=2)
    labels = [torch.from_numpy(rng.integers(0, 4, size=(2, 12, 14))) for _ in outs]  # image resolution
    labels[0][0, :2] = 255
    scorer = scores.get("sml").fit(outs, labels)
    values = {c: [] for c in range(4)}
    for out, label in zip(outs, labels):
        small = label[:, ::2, ::2].numpy()  # nearest neighbour to 6×7
        top = out.logits.amax(1).double().numpy()
        for c in range(4):
            values[c].extend(top[small == c])
    np.testing.assert_allclose(scorer.mean.numpy(), [np.mean(values[c]) for c in range(4)], rtol=1e-5)
    clone = scores.get("sml").load_state_dict(scorer.state_dict())
    torch.testing.assert_close(clone(outs[1]), scorer(outs[1]))


def test_sml_label_errors(rng):
    outs = _outputs(rng, n=1)
    with pytest.raises(OodsegError, match=r"labels\[0\]: unknown label values \[7\]"):
        scores.get("sml").fit(outs, [torch.full((2, 6, 7), 7)])
    with pytest.raises(OodsegError, match="fewer label batches"):
        scores.get("sml").fit(outs * 2, [torch.zeros(2, 6, 7, dtype=torch.long)])
    with pytest.raises(OodsegError, match="no valid pixels"):
        scores.get("sml").fit(outs, [torch.full((2, 6, 7), 255)])


def _brute_boundary_suppression(score, prediction, width, iterations):
    score = score.copy()
    height, wide = score.shape
    for i in range(iterations):
        reach = max(1, width - i * (width // iterations))
        boundary = np.zeros_like(prediction, dtype=bool)
        for a, b in np.ndindex(height, wide):
            window = prediction[max(0, a - reach):a + reach + 1, max(0, b - reach):b + reach + 1]
            boundary[a, b] = (window != prediction[a, b]).any()
        new = score.copy()
        for a, b in np.ndindex(height, wide):
            if boundary[a, b]:
                around = [(x, y) for x in range(a - 1, a + 2) for y in range(b - 1, b + 2)
                          if 0 <= x < height and 0 <= y < wide and not boundary[x, y]]
                if around:
                    new[a, b] = np.mean([score[x, y] for x, y in around])
        score = new
    return score


def test_boundary_suppression_matches_brute_force(rng):
    prediction = np.zeros((12, 13), dtype=np.int64)
    prediction[:, 7:] = 1
    prediction[2:5, 1:4] = 2
    score = rng.normal(size=(12, 13))
    got = suppress_boundaries(torch.from_numpy(score)[None].float(), torch.from_numpy(prediction)[None], 4, 4)
    expected = _brute_boundary_suppression(score, prediction, 4, 4)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, score)


def test_dilated_smoothing_matches_direct_sum(rng):
    score = rng.normal(size=(30, 31))
    got = dilated_smoothing(torch.from_numpy(score)[None].float(), 7, 1.0, 3)[0].numpy()
    offsets = np.arange(7) - 3
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / 2)
    kernel /= kernel.sum()
    padded = np.pad(score, 9, mode="reflect")
    a, b = 15, 4
    expected = sum(kernel[i, j] * padded[a + 9 + 3 * (i - 3), b + 9 + 3 * (j - 3)] for i in range(7) for j in range(7))
    assert got[a, b] == pytest.approx(expected, rel=1e-5)


def test_sml_options_change_the_map(rng):
    outs = _outputs(rng, n=2, size=(20, 21))
    plain = scores.get("sml").fit(outs)
    smooth = scores.get("sml", boundary_suppression=True, dilated_smoothing=True).load_state_dict(plain.state_dict())
    assert not smooth.pixelwise and plain.pixelwise
    result = smooth(outs[0])
    assert result.shape == (2, 20, 21) and torch.isfinite(result).all()
    assert not torch.allclose(result, plain(outs[0]))


@pytest.mark.parametrize("use_labels", [False, True])
def test_mahalanobis_matches_sklearn(rng, use_labels):
    outs = _outputs(rng, n=2, classes=3, dim=4, size=(5, 6))
    labels = [torch.from_numpy(rng.integers(0, 3, size=(2, 5, 6))) for _ in outs] if use_labels else None
    scorer = scores.get("mahalanobis", pixels_per_image=1000).fit(outs, labels)  # all 30 pixels per image
    z = np.concatenate([o.features.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 4) for o in outs])
    if use_labels:
        cls = np.concatenate([lab.numpy().reshape(-1) for lab in labels])
    else:
        cls = np.concatenate([o.logits.numpy().argmax(1).reshape(-1) for o in outs])
    means = np.stack([z[cls == c].mean(0) for c in range(3)])
    covariance = EmpiricalCovariance(assume_centered=True).fit(z - means[cls])
    np.testing.assert_allclose(scorer.covariance.numpy(), covariance.covariance_, rtol=1e-8, atol=1e-10)
    test = outs[0].features.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 4)
    expected = np.min([covariance.mahalanobis(test - means[c]) for c in range(3)], axis=0).reshape(2, 5, 6)
    np.testing.assert_allclose(scorer(outs[0]).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(functional.mahalanobis(features=outs[0].features, class_means=scorer.means,
                                                      covariance=scorer.covariance).numpy(), expected, rtol=1e-4)
    clone = scores.get("mahalanobis").load_state_dict(scorer.state_dict())
    torch.testing.assert_close(clone(outs[0]), scorer(outs[0]))


def test_mahalanobis_subsamples_reproducibly(rng):
    outs = _outputs(rng, n=2)
    first = scores.get("mahalanobis", pixels_per_image=10, seed=3).fit(outs)
    second = scores.get("mahalanobis", pixels_per_image=10, seed=3).fit(outs)
    assert first.count.sum().item() == 2 * 2 * 10
    torch.testing.assert_close(first.covariance, second.covariance)


def test_mahalanobis_singular_covariance_stays_finite(rng):
    outs = _outputs(rng, n=1, dim=5)
    for out in outs:
        out.features[:, 4] = out.features[:, 0]  # rank-deficient
    scorer = scores.get("mahalanobis").fit(outs)
    assert torch.isfinite(scorer(outs[0])).all()
    with pytest.raises(OodsegError, match="mahalanobis: fitted on 5 features"):
        scorer(SegOutput(logits=outs[0].logits, features=outs[0].features[:, :3]))
    with pytest.raises(OodsegError, match="state_dict: 'covariance'"):
        scores.get("mahalanobis").load_state_dict({"means": scorer.means})
