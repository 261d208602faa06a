"""mIoU, mIoU with an OoD class and open-mIoU against brute-force per-class loops."""
import numpy as np
import pytest

from oodseg.errors import OodsegError
from oodseg.metrics.segmentation import SegmentationMetrics
from oodseg.metrics.tally import ordered_key

K = 4
OOD = 254


def make_data(rng, shape=(3, 30, 40)):
    gt = rng.integers(0, K, size=shape)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, K, size=shape))
    gt[rng.random(shape) < 0.1] = OOD
    gt[rng.random(shape) < 0.05] = 255
    score = rng.normal(size=shape) + 1.5 * (gt == OOD)
    return pred, gt, score.astype(np.float32)


def brute_iou_with_ood(pred, gt, score, t):
    """Per inlier class k: TP = GT k & pred k & not OoD; FP = pred k & not OoD & GT != k (outliers too); FN = GT k - TP."""
    valid = gt != 255
    ood = score >= t
    ious = []
    for k in range(K):
        tp = np.sum(valid & (gt == k) & (pred == k) & ~ood)
        fp = np.sum(valid & (gt != k) & (pred == k) & ~ood)
        fn = np.sum(valid & (gt == k)) - tp
        ious.append(tp / (tp + fp + fn))
    return np.mean(ious)


def test_closed_miou_matches_loop(rng):
    pred, gt, _ = make_data(rng)
    m = SegmentationMetrics(num_classes=K)
    m.update(pred, gt)
    ious = []
    for k in range(K):
        inl = gt < K
        tp = np.sum(inl & (gt == k) & (pred == k))
        ious.append(tp / (np.sum(inl & (gt == k)) + np.sum(inl & (pred == k)) - tp))
    assert m.compute()["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_miou_at_thresholds_and_open_miou(rng, mode):
    pred, gt, score = make_data(rng)
    score = np.round(score * 8) / 8  # grid values: streaming bins hold them exactly
    m = SegmentationMetrics(num_classes=K, ood_thresholds=(0.5, 1.0, 10.0), mode=mode)
    m.update(pred[:2], gt[:2], score[:2])
    rest = SegmentationMetrics(num_classes=K, ood_thresholds=(0.5, 1.0, 10.0), mode=mode)
    rest.update(pred[2:], gt[2:], score[2:])
    got = m.merge(rest).compute()
    for row in got["mIoU_at"]:
        assert row["mIoU"] == pytest.approx(brute_iou_with_ood(pred, gt, score, row["t"]), abs=1e-12)
    # open-mIoU threshold: the largest t with TPR(score >= t | outlier) >= 0.95
    out_scores = score[gt == OOD]
    candidates = np.unique(score)[::-1]
    t95 = next(t for t in candidates if np.mean(out_scores >= t) >= 0.95)
    if mode == "exact":
        assert got["open_threshold"] == t95
    else:  # streaming reports the lower edge of t95's bin
        assert ordered_key(np.array([got["open_threshold"]]), 16) == ordered_key(np.array([t95]), 16)
    assert got["open_mIoU"] == pytest.approx(brute_iou_with_ood(pred, gt, score, t95), abs=1e-12)


def test_bad_inputs(rng):
    pred, gt, score = make_data(rng)
    m = SegmentationMetrics(num_classes=K)
    with pytest.raises(OodsegError, match="label: unknown values"):
        m.update(pred, np.full(gt.shape, 7))
    with pytest.raises(OodsegError, match="prediction"):
        m.update(pred + K, gt)
    with pytest.raises(OodsegError, match="shape"):
        m.update(pred, gt[:, :-1])
    m.update(pred, gt, score)
    with pytest.raises(OodsegError, match="every update"):
        m.update(pred, gt)
