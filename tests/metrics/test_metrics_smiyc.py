"""The official SegmentMeIfYouCan pixel computation (oodseg.metrics.smiyc) against a plain re-statement.

The reference below restates road-anomaly-benchmark's ``binary_confusion_matrix`` (768
``percentiles`` bins, ``np.histogram`` per frame) and ``aggregate_dynamic_bins`` +
``curves_from_cmats`` (thresholds of all frames sorted high to low, the curve read at the
last index of each threshold, (0, 0) prepended) with explicit loops, as numpy 1.23 runs it:
the map's spread in its own dtype, ε and the edges in float64. Where frames share the top
threshold, the official curve's first point depends on numpy 1.23's unstable argsort: there
the expected numbers are outputs of the official code itself, run under numpy 1.23.5.
"""
import numpy as np
import pytest

from oodseg.errors import OodsegError
from oodseg.metrics.legacy_argsort import argsort_last
from oodseg.metrics.pixel import pixel_metrics
from oodseg.metrics.smiyc import (SMIYC_BINS, SmiycPixelMetrics, compared_threshold, frame_bins, smiyc_pixel_metrics,
                                  sorted_quantiles)


# (n, m, last index of numpy 1.23.5's np.argsort(((arange(n) * 7919) % m).astype(float64)))
NUMPY_123_ARGSORT_LAST = [(17, 3, 16), (40, 3, 19), (200, 5, 66), (1000, 7, 164), (5000, 4, 1997),
                          (20000, 11, 19999), (65, 2, 43), (300, 1000, 284)]


@pytest.mark.parametrize("n, m, last", NUMPY_123_ARGSORT_LAST)
def test_argsort_tie_breaking_is_numpy_1_23s(n, m, last):
    values = ((np.arange(n) * 7919) % m).astype(np.float64)
    assert argsort_last(values) == last


def official_reference(scores, labels, num_bins=SMIYC_BINS):
    """AP, AUROC, FPR95, best F1 and its threshold, restated from the official code with loops."""
    thresholds, tp_rel, fp_rel = [], [], []
    for score, label in zip(scores, labels):
        roi = label < 255
        prob, gt = score[roi], label[roi].astype(bool)
        if prob.size == 0:
            continue
        vmin, vmax = np.min(prob), np.max(prob)
        vrange = vmax - vmin  # the map's dtype (a numpy scalar)
        eps = max(float(vrange) * 1e-2, 1e-2)  # numpy 1.23: float16 scalar * Python float -> float64
        bins = [np.array([float(vmin) - eps, float(vmax) + eps])]
        if gt.sum():
            bins.append(np.quantile(prob[gt], np.linspace(0, 1, min(num_bins // 2, int(gt.sum())))))
        if (~gt).sum():
            bins.append(np.quantile(prob[~gt], np.linspace(0, 1, min(num_bins // 2, int((~gt).sum())))))
        bins = np.unique(np.concatenate(bins))
        tp, edges = np.histogram(prob[gt], bins=bins)
        fp, _ = np.histogram(prob[~gt], bins=bins)
        for k in reversed(range(len(tp))):  # bin k = [edges[k], edges[k+1]) at threshold edges[k], high to low
            thresholds.append(edges[k])
            tp_rel.append(tp[k])
            fp_rel.append(fp[k])
    order = sorted(range(len(thresholds)), key=lambda i: -thresholds[i])  # high to low
    assert len(order) < 2 or thresholds[order[0]] != thresholds[order[1]], "top tie: order is numpy's"
    num_pos, num_neg = sum(tp_rel), sum(fp_rel)
    tp_cum = np.cumsum([tp_rel[i] for i in order])
    fp_cum = np.cumsum([fp_rel[i] for i in order])
    # the official curve: the first row, then the last row of each threshold
    keep = [0] + [j for j in range(len(order) - 1) if thresholds[order[j]] != thresholds[order[j + 1]]]
    keep.append(len(order) - 1)
    points = [(0, 0, np.inf)] + [(tp_cum[j], fp_cum[j], thresholds[order[j]]) for j in keep]
    ap = auroc = 0.0
    fpr95, best_f1, best_threshold = None, -1.0, None
    for (tp0, fp0, _), (tp1, fp1, thr) in zip(points[:-1], points[1:]):
        precision = tp1 / (tp1 + fp1) if tp1 + fp1 else 1.0
        ap += (tp1 - tp0) / num_pos * precision
        auroc += (fp1 - fp0) / num_neg * (tp0 + tp1) / num_pos / 2
        if fpr95 is None and tp1 / num_pos >= 0.95:
            fpr95 = fp1 / num_neg
        f1 = 2 * tp1 / (2 * tp1 + fp1 + (num_pos - tp1))
        if f1 > best_f1:
            best_f1, best_threshold = f1, thr
    return {"AP": ap, "AUROC": auroc, "FPR95": fpr95, "best_F1": best_f1, "best_F1_threshold": best_threshold,
            "n_pixels": num_pos + num_neg, "n_anomaly": num_pos}


def crafted_frames(rng, dtype=np.float16):
    """Six 40x50 frames: heavy tails, ties, a constant frame, negative energies, no anomaly, void only."""
    shape = (40, 50)
    labels = np.zeros((6, *shape), np.uint8)
    labels[:, :5] = 255
    for i in (0, 1, 2, 3):
        y, x = rng.integers(5, 30, size=2)
        labels[i, y:y + 8, x:x + 12] = 1
    labels[5] = 255
    labels[5, 0, 0] = 1  # one anomaly pixel, everything else void
    anomaly = labels == 1
    scores = np.empty(labels.shape, np.float64)
    scores[0] = rng.standard_cauchy(shape) + 3 * anomaly[0]  # heavy tails
    scores[1] = np.round(rng.random(shape) * 4) / 4 + 0.5 * anomaly[1]  # ties: 7 distinct values
    scores[2] = 0.75  # constant frame with anomaly pixels
    scores[3] = -12 + rng.normal(0, 2, shape) + 4 * anomaly[3]  # negative, energy-like
    scores[4] = rng.normal(0, 1, shape)  # no anomaly pixel
    scores[5] = rng.normal(0, 1, shape)
    return scores.astype(dtype), labels


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("num_bins", [SMIYC_BINS, 16])
def test_matches_restated_official_binning(rng, dtype, num_bins):
    scores, labels = crafted_frames(rng, dtype)
    ref = official_reference(scores, labels, num_bins)
    for mode in ("exact", "streaming"):
        metrics = SmiycPixelMetrics(mode=mode, num_bins=num_bins)
        metrics.update(scores, labels)
        got = metrics.compute()
        for key in ("AP", "AUROC", "FPR95", "best_F1"):
            assert got[key] == pytest.approx(ref[key], abs=1e-12), (mode, key)
        assert got["best_F1_threshold"] == ref["best_F1_threshold"]
        assert (got["n_pixels"], got["n_anomaly"], got["n_frames"]) == (ref["n_pixels"], ref["n_anomaly"], 6)


def saturated_frames(n):
    """n float16 frames 30x40 clipped at 1.0; even frames saturate on the anomaly, odd ones on road pixels."""
    f, y, x = np.meshgrid(np.arange(n), np.arange(30), np.arange(40), indexing="ij")
    labels = np.zeros((n, 30, 40), np.uint8)
    labels[:, 10:20, 5:15] = 1
    labels[:, :2] = 255
    scores = ((f * 13 + y * 7 + x * 11) % 89) / 100 + 0.1 * (labels == 1)
    scores[(f % 2 == 0) & (labels == 1)] = 1.0
    scores[(f % 2 == 1) & (y >= 25 - f % 5) & (x >= 20 + f % 7)] = 1.0
    return scores.astype(np.float16), labels


# road-anomaly-benchmark's binary_confusion_matrix + aggregate_dynamic_bins + curves_from_cmats run
# under numpy 1.23.5 on saturated_frames(n): (AP, AUROC, FPR95, best F1, best-F1 threshold).
# Under numpy 2.2 the same code gives AP 0.34293235965852736 (n=6) and 0.32706650634811174 (n=24).
OFFICIAL_NUMPY_123 = {6: (0.4295990263251941, 0.7771510076252723, 0.7983660130718955, 0.52824184566428,
                          0.8798828125000001),
                      24: (0.34985099778819234, 0.7706846575435731, 0.8100898692810458, 0.5137118578601777,
                           0.8798828125000001)}


@pytest.mark.parametrize("n", sorted(OFFICIAL_NUMPY_123))
def test_frames_saturating_at_the_same_maximum_match_the_official_code(n):
    """Several frames share the top threshold: the official curve's first point holds one frame's
    top bin, chosen by numpy 1.23's argsort (numpy 2's choice moves AP by 8.7 points for n=6)."""
    scores, labels = saturated_frames(n)
    got = smiyc_pixel_metrics(scores, labels)
    for key, expected in zip(("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold"), OFFICIAL_NUMPY_123[n]):
        assert got[key] == pytest.approx(expected, abs=1e-12), key


def test_binning_differs_from_the_exact_sweep(rng):
    """Few bins per frame: the official curve is coarser than the exact one, so AP moves (the issue's 0.6-2.6 points)."""
    scores, labels = crafted_frames(rng)
    exact, official = pixel_metrics(scores, labels), smiyc_pixel_metrics(scores, labels, num_bins=8)
    assert abs(exact["AP"] - official["AP"]) > 1e-3
    assert official["AP"] == pytest.approx(official_reference(scores, labels, 8)["AP"], abs=1e-12)


def test_many_values_per_frame_reach_all_768_bins(rng):
    """Frames with > 384 pixels per class: 768 bins; bins hold interpolated quantiles as thresholds."""
    scores = rng.normal(0, 3, (3, 60, 80)).astype(np.float16)
    labels = (rng.random((3, 60, 80)) < 0.3).astype(np.uint8)
    scores[labels == 1] += np.float16(2)
    ref = official_reference(scores, labels)
    got = smiyc_pixel_metrics(scores, labels)
    for key in ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_merge_of_halves_equals_one_pass_and_streaming_state_is_rows(rng):
    scores, labels = crafted_frames(rng)
    whole = SmiycPixelMetrics(mode="streaming")
    whole.update(scores, labels)
    first, second = SmiycPixelMetrics(mode="streaming"), SmiycPixelMetrics(mode="streaming")
    first.update(scores[:3], labels[:3])
    second.update(scores[3:], labels[3:])
    assert first.merge(second).compute() == whole.compute()
    assert whole.state_bytes() <= 6 * (SMIYC_BINS + 1) * 3 * 8
    exact = SmiycPixelMetrics(mode="exact")
    exact.update(scores, labels)
    assert exact.compute() == whole.compute()
    with pytest.raises(OodsegError, match="differ in mode"):
        exact.merge(whole)


def test_compared_threshold_follows_numpy_1_23_value_based_casting():
    # float16 map: θ rounded to the nearest float16 (0.30000001 -> 0.300048828125)
    assert compared_threshold(0.30000001, np.float16) == 0.300048828125
    assert compared_threshold(-7.123456, np.float16) == float(np.float16(-7.123456))
    # |θ| beyond float16's range: numpy 1.23 compares in float32
    assert compared_threshold(70000.123, np.float16) == float(np.float32(70000.123))
    assert compared_threshold(0.1, np.float32) == float(np.float32(0.1))
    assert compared_threshold(0.1, np.float64) == 0.1
    # the component mask on a float16 map: a pixel equal to the rounded θ is not above it (in float64 it is)
    values = np.array([0.300048828125, 0.30029296875], np.float16)
    assert list(values.astype(np.float32) > compared_threshold(0.30001, np.float16)) == [False, True]
    assert list(values.astype(np.float64) > 0.30001) == [True, True]


def test_bad_inputs(rng):
    with pytest.raises(OodsegError, match="mode"):
        SmiycPixelMetrics(mode="fast")
    with pytest.raises(OodsegError, match="num_bins"):
        SmiycPixelMetrics(num_bins=1)
    with pytest.raises(OodsegError, match="NaN"):
        smiyc_pixel_metrics(np.full((4, 4), np.nan, np.float16), np.zeros((4, 4), np.uint8))
    with pytest.raises(OodsegError, match="unknown label values"):
        smiyc_pixel_metrics(np.zeros((4, 4), np.float16), np.full((4, 4), 7, np.uint8))


def _quantile_cases(rng):
    """(values, levels): normal and heavy-tailed, ties, a single value, one pixel, in float16/32/64."""
    for dtype in (np.float16, np.float32, np.float64):
        for n in (1, 2, 7, 384, 385, 5000):
            for values in (rng.normal(0, 3, n), rng.integers(0, 4, n) / 3, np.full(n, 0.3), rng.random(n) ** 9):
                for m in (1, 2, min(n, 384), 384):
                    yield values.astype(dtype), np.linspace(0, 1, m)


def test_sorted_quantiles_equal_np_quantile_bit_for_bit(rng):
    """The quantiles read from the sorted values (no partition) are np.quantile's, bit for bit, for every
    dtype; float16 sorted as float32 (exact) gives the same."""
    for values, levels in _quantile_cases(rng):
        expected = np.quantile(values, levels)
        ordered = np.sort(values)
        for order in (ordered, ordered.astype(np.float32) if values.dtype == np.float16 else ordered):
            got = sorted_quantiles(order, levels, values.dtype)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (values.dtype, values.size)


def test_frame_bins_with_one_class_empty_or_a_single_value(rng):
    """A frame without anomalies (or without inliers) has the other class's bins only; a constant frame
    one bin holding every pixel; the counts always add up to the pixels."""
    values = rng.normal(0, 1, 1000).astype(np.float32)
    for anomaly in (np.zeros(1000, bool), np.ones(1000, bool)):
        lower, n_anomaly, n_inlier = frame_bins(values, anomaly)
        present = n_anomaly if anomaly.all() else n_inlier
        assert present.sum() == 1000 and (n_inlier if anomaly.all() else n_anomaly).sum() == 0
        # edges: vmin - eps, the 384 quantiles, vmax + eps; the lower edges drop the last
        assert lower[0] < values.min() and np.array_equal(lower[1:], np.quantile(values, np.linspace(0, 1, 384)))
    lower, n_anomaly, n_inlier = frame_bins(np.full(5, 0.5, np.float16), np.array([1, 0, 0, 1, 0], bool))
    assert lower.tolist() == [0.49, 0.5] and n_anomaly.tolist() == [0, 2] and n_inlier.tolist() == [0, 3]


def test_ap_and_auroc_group_their_terms_as_the_official_curve_to_the_bit(rng):
    """The official curve reads index 0 and the last index of each threshold: with a unique top threshold
    its first point comes twice. AP = np.sum(np.diff(recalls) * precisions[1:]) and AUROC = trapz over
    those arrays (a zero term more changes how numpy's pairwise sum groups the others): equal bits."""
    for n in (3, 8):
        scores = (rng.random((n, 50, 60)) ** 3).astype(np.float32)
        labels = (rng.random((n, 50, 60)) < 0.2).astype(np.uint8)
        scores[labels == 1] += np.float32(0.3)
        rows = []
        for score, label in zip(scores, labels):
            lower, n_anomaly, n_inlier = frame_bins(score.ravel(), label.ravel() == 1)
            rows.append(np.stack((lower, n_anomaly, n_inlier))[:, ::-1])
        thresholds, anomaly, inlier = np.concatenate(rows, axis=1)
        order = np.argsort(thresholds, kind="stable")[::-1]
        assert thresholds[order[0]] > thresholds[order[1]]  # unique top: no tie-breaking involved
        tp, fp = np.cumsum(anomaly[order]), np.cumsum(inlier[order])
        ordered = thresholds[order]
        keep = np.concatenate([[0], np.nonzero(ordered[:-1] != ordered[1:])[0], [ordered.size - 1]])
        tp, fp = np.concatenate([[0], tp[keep]]), np.concatenate([[0], fp[keep]])
        recalls, precisions = tp / tp[-1], np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        tpr, fpr = tp / tp[-1], fp / fp[-1]
        got = smiyc_pixel_metrics(scores, labels)
        assert got["AP"] == np.sum(np.diff(recalls) * precisions[1:])
        assert got["AUROC"] == np.trapezoid(tpr, fpr)
