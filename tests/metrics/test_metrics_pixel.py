"""Pixel metrics against scikit-learn (exact) and against exact mode (streaming)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodseg.errors import OodsegError
from oodseg.metrics.pixel import PixelMetrics, pixel_metrics
from oodseg.metrics.tally import bin_lower_edge, ordered_key


def sklearn_reference(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {"AP": average_precision_score(labels, scores), "AUROC": roc_auc_score(labels, scores),
            "FPR95": fpr[np.argmax(tpr >= 0.95)]}


def brute_force_best_f1(scores, labels):
    best = -1.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        f1 = 2 * tp / (pred.sum() + labels.sum())
        best = max(best, f1)
    return best


def make_labels(rng, shape, p=0.2, void=0.1):
    y = (rng.random(shape) < p).astype(np.uint8)
    y[rng.random(shape) < void] = 255
    return y


@pytest.mark.parametrize("kind", ["gaussian", "tied", "float16"])
def test_exact_equals_sklearn(rng, kind):
    shape = (3, 40, 50)
    y = make_labels(rng, shape)
    s = rng.normal(size=shape) + 0.8 * (y == 1)
    if kind == "tied":
        s = np.round(s * 2) / 2
    s = s.astype(np.float16 if kind == "float16" else np.float32)
    got = pixel_metrics(s, y)
    v = y != 255
    ref = sklearn_reference(s[v].astype(np.float32), y[v])
    for key in ref:
        assert abs(got[key] - ref[key]) < 1e-9, key
    assert abs(got["best_F1"] - brute_force_best_f1(s[v].astype(np.float32), y[v])) < 1e-12
    assert got["n_pixels"] == v.sum() and got["n_anomaly"] == (y == 1).sum() and got["n_frames"] == 3


def test_single_class_images_pooled(rng):
    # each image holds one class only; pooled metrics still equal sklearn on the union
    s = rng.normal(size=(4, 20, 20)).astype(np.float32)
    y = np.zeros((4, 20, 20), np.uint8)
    y[1] = 1
    y[3] = 1
    s[y == 1] += 1.0
    got = pixel_metrics(torch.from_numpy(s), torch.from_numpy(y))
    ref = sklearn_reference(s.ravel(), y.ravel())
    for key in ref:
        assert abs(got[key] - ref[key]) < 1e-9


def test_roi_restricts_pixels(rng):
    s = rng.normal(size=(30, 30)).astype(np.float32)
    y = make_labels(rng, (30, 30), void=0)
    roi = rng.random((30, 30)) < 0.5
    got = pixel_metrics(s, y, roi=roi)
    ref = sklearn_reference(s[roi], y[roi])
    assert abs(got["AP"] - ref["AP"]) < 1e-9 and got["n_pixels"] == roi.sum()


def test_per_image_matches_sklearn_average(rng):
    s = rng.normal(size=(5, 16, 16)).astype(np.float32)
    y = (rng.random((5, 16, 16)) < 0.3).astype(np.uint8)
    y[2] = 0  # single-class image: skipped
    s += y
    got = pixel_metrics(s, y, aggregate="per_image")
    refs = [sklearn_reference(s[i].ravel(), y[i].ravel()) for i in (0, 1, 3, 4)]
    for key in ("AP", "AUROC", "FPR95"):
        assert abs(got[key] - np.mean([r[key] for r in refs])) < 1e-9
    assert got["n_images_evaluated"] == 4


def energy_like(rng, n):
    s = -np.abs(rng.gamma(2.0, 8.0, size=n)).clip(0, 60)
    outliers = rng.random(n) < 1e-4
    s[outliers] = rng.choice([-1e4, 1e4], size=outliers.sum())
    return s


DISTRIBUTIONS = {
    "gaussian": lambda rng, n: rng.normal(size=n),
    "probabilities": lambda rng, n: 1 / (1 + np.exp(-rng.normal(scale=3, size=n))),
    "logits": lambda rng, n: rng.normal(loc=-5, scale=4, size=n),
    "energy": energy_like,
    "quantised21": lambda rng, n: np.round(rng.random(n) * 20) / 20,
    "float16": lambda rng, n: rng.normal(size=n).astype(np.float16),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_streaming_close_to_exact(rng, name):
    n = 200_000
    y = (rng.random(n) < 0.1).astype(np.uint8)
    s = np.asarray(DISTRIBUTIONS[name](rng, n), dtype=np.float64)
    shift = 0.5 * np.std(s[np.abs(s) < 1e3])
    s = s + shift * y  # anomalies score somewhat higher
    if name == "quantised21":
        s = np.round(s * 20) / 20
    s = s.astype(np.float16 if name == "float16" else np.float32).reshape(1, 400, 500)
    y = y.reshape(1, 400, 500)
    exact, streaming = pixel_metrics(s, y), pixel_metrics(s, y, mode="streaming")
    for key in ("AP", "AUROC", "FPR95"):
        assert abs(exact[key] - streaming[key]) < 1e-3, (name, key, exact[key], streaming[key])
    if name in ("quantised21", "float16"):  # distinct values fall in distinct bins: identical numbers
        for key in ("AP", "AUROC", "FPR95", "best_F1"):
            assert exact[key] == pytest.approx(streaming[key], abs=1e-12)


def test_ordered_key_is_monotone_and_edges_are_lower_bounds(rng):
    v = np.sort(np.concatenate([rng.normal(scale=10.0 ** rng.integers(-30, 30, 5000), size=5000),
                                [0.0, -1e-38, 1e-38, -3e38, 3e38]]).astype(np.float32))
    keys = ordered_key(v, 20)
    assert np.all(np.diff(keys) >= 0)
    assert np.all(bin_lower_edge(keys, 20) <= v)
    assert np.all(ordered_key(bin_lower_edge(keys, 20), 20) == keys)


def test_merge_of_halves_equals_one_pass(rng):
    s = rng.normal(size=(6, 30, 30)).astype(np.float32)
    y = make_labels(rng, (6, 30, 30))
    for mode in ("exact", "streaming"):
        whole = PixelMetrics(mode=mode)
        whole.update(s, y)
        first, second = PixelMetrics(mode=mode), PixelMetrics(mode=mode)
        first.update(s[:2], y[:2])
        second.update(s[2:], y[2:])
        merged = first.merge(second)
        assert merged.compute() == whole.compute()
        if mode == "streaming":
            assert np.array_equal(merged.tally.counts, whole.tally.counts)


def test_streaming_state_is_bounded(rng):
    m = PixelMetrics(mode="streaming")
    before = m.tally.state_bytes()
    m.update(rng.normal(size=(2, 100, 100)).astype(np.float32), make_labels(rng, (2, 100, 100)))
    assert m.tally.state_bytes() == before <= 50 * 2**20


def test_curves_shapes_and_endpoints(rng):
    s = rng.normal(size=(2, 100, 100)).astype(np.float32)
    y = make_labels(rng, (2, 100, 100))
    s[y == 1] += 1
    m = PixelMetrics()
    m.update(s, y)
    c = m.curves(max_points=64)
    assert len(c["pr"]["recall"]) <= 64 and len(c["roc"]["fpr"]) <= 64
    assert c["roc"]["fpr"][0] == 0 and c["roc"]["fpr"][-1] == 1 and c["pr"]["recall"][-1] == 1
    assert np.all(np.diff(c["roc"]["fpr"]) >= 0)
    edges = np.array(c["hist"]["edges"])
    for cls in ("inlier", "anomaly"):  # densities integrate to 1
        assert np.sum(np.array(c["hist"][cls]) * np.diff(edges)) == pytest.approx(1.0)


def test_bad_inputs_raise(rng):
    s = rng.normal(size=(10, 10)).astype(np.float32)
    y = np.zeros((10, 10), np.uint8)
    with pytest.raises(OodsegError, match="unknown label values \\[7\\]"):
        pixel_metrics(s, np.full((10, 10), 7, np.uint8))
    with pytest.raises(OodsegError, match="does not match"):
        pixel_metrics(s, np.zeros((10, 11), np.uint8))
    bad = s.copy()
    bad[3, 3] = np.nan
    with pytest.raises(OodsegError, match="NaN"):
        pixel_metrics(bad, y)
    bad[3, 3] = np.inf
    with pytest.raises(OodsegError, match="Inf"):
        pixel_metrics(bad, y)
    with pytest.raises(OodsegError, match="shape"):
        pixel_metrics(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(OodsegError, match="mode"):
        PixelMetrics(mode="fast")
    with pytest.raises(OodsegError, match="merge"):
        PixelMetrics().merge(PixelMetrics(mode="streaming"))


def test_missing_class_gives_nan(rng):
    m = pixel_metrics(rng.normal(size=(5, 5)).astype(np.float32), np.zeros((5, 5), np.uint8))
    assert np.isnan(m["AP"]) and np.isnan(m["AUROC"]) and m["n_anomaly"] == 0
