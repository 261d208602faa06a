"""ECE and AuSE against brute-force loops."""
import numpy as np
import pytest

from oodseg.errors import OodsegError
from oodseg.metrics.calibration import CalibrationMetrics


def make_frame(rng, n_classes=5, shape=(2, 20, 25)):
    logits = rng.normal(scale=2.0, size=(shape[0], n_classes) + shape[1:])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    label = rng.integers(0, n_classes, size=shape)
    agree = rng.random(shape) < 0.6
    label = np.where(agree, probs.argmax(axis=1), label)
    return probs, label


def brute_force(u, probs, label, n_bins=15, n_fractions=100):
    """Per-pixel loops over flattened valid pixels (label 255 dropped)."""
    p = np.moveaxis(probs, 1, -1).reshape(-1, probs.shape[1])
    y, u = label.ravel(), u.ravel()
    keep = y != 255
    p, y, u = p[keep], y[keep], u[keep]
    conf = 1 - u / u.max()
    correct = p.argmax(1) == y
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    brier = np.array([sum((p[i, c] - (c == y[i])) ** 2 for c in range(p.shape[1])) for i in range(len(y))])
    n = len(y)
    model, oracle = [], []
    for i in range(n_fractions):
        m = int(round(i / n_fractions * n))
        model.append(brier[np.argsort(-u, kind="stable")][m:].mean())
        oracle.append(np.sort(brier)[::-1][m:].mean())
    return ece, np.mean(np.array(model) - np.array(oracle)), model, oracle


def test_exact_against_brute_force(rng):
    probs, label = make_frame(rng)
    label[0, 0, :] = 255  # 25 void pixels -> 975 valid pixels... keep n divisible by 100 below
    label[0, 1, :] = 255
    label[1, 0, :] = 255
    label[1, 1, :] = 255  # 900 valid pixels: every removed fraction is a whole pixel count
    u = (1 - probs.max(axis=1)) * rng.uniform(0.5, 2.0, size=label.shape)  # continuous, no ties
    m = CalibrationMetrics()
    m.update(u, probs, label)
    got = m.compute()
    ece, ause, model, oracle = brute_force(u, probs, label)
    tol = 1e-12
    assert got["ECE"] == pytest.approx(ece, abs=tol)
    assert got["AuSE"] == pytest.approx(ause, abs=tol)
    np.testing.assert_allclose(got["sparsification"]["model"], model, atol=tol)
    np.testing.assert_allclose(got["sparsification"]["oracle"], oracle, atol=tol)
    assert got["n_pixels"] == 900 and sum(got["reliability"]["count"]) == 900


def test_streaming_close_to_exact(rng):
    probs, label = make_frame(rng, shape=(4, 100, 100))
    label[rng.random(label.shape) < 0.05] = 255
    u = (1 - probs.max(axis=1)) * rng.uniform(0.5, 2.0, size=label.shape)
    exact, streaming = CalibrationMetrics(), CalibrationMetrics(mode="streaming")
    exact.update(u, probs, label)
    streaming.update(u, probs, label)
    e, s = exact.compute(), streaming.compute()
    assert s["ECE"] == pytest.approx(e["ECE"], abs=1e-3) and s["AuSE"] == pytest.approx(e["AuSE"], abs=1e-3)
    counts_s, counts_e = np.array(s["reliability"]["count"]), np.array(e["reliability"]["count"])
    assert counts_s.sum() == counts_e.sum() and np.abs(counts_s - counts_e).max() <= 1e-3 * counts_e.sum()


def test_merge_and_complement_mode(rng):
    probs, label = make_frame(rng)
    u = 1 - probs.max(axis=1)
    whole = CalibrationMetrics(confidence="complement")
    whole.update(u, probs, label)
    a, b = CalibrationMetrics(confidence="complement"), CalibrationMetrics(confidence="complement")
    a.update(u[:1], probs[:1], label[:1])
    b.update(u[1:], probs[1:], label[1:])
    assert a.merge(b).compute()["ECE"] == pytest.approx(whole.compute()["ECE"], abs=1e-15)
    # complement of msp is the max probability: ECE of the classic confidence
    conf = probs.max(axis=1).ravel()
    correct = (probs.argmax(axis=1) == label).ravel()
    bins = np.clip(np.ceil(conf * 15) - 1, 0, 14)
    ece = sum((bins == b).mean() * abs(correct[bins == b].mean() - conf[bins == b].mean())
              for b in range(15) if (bins == b).any())
    assert whole.compute()["ECE"] == pytest.approx(ece, abs=1e-12)


def test_bad_inputs(rng):
    probs, label = make_frame(rng)
    u = 1 - probs.max(axis=1)
    m = CalibrationMetrics()
    with pytest.raises(OodsegError, match="probs"):
        m.update(u, probs[:, :, :-1], label)
    with pytest.raises(OodsegError, match="label"):
        m.update(u, probs, np.full(label.shape, 7))
    with pytest.raises(OodsegError, match="NaN"):
        m.update(np.full(u.shape, np.nan), probs, label)
    m.update(u - 1, probs, label)
    with pytest.raises(OodsegError, match=">= 0"):
        m.compute()
