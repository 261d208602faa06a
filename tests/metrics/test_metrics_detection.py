"""Meta-OoD detection errors against a brute-force per-component loop."""
import numpy as np
import pytest
from scipy.ndimage import label as nd_label

from oodseg.errors import OodsegError
from oodseg.metrics.detection import DetectionMetrics, meta_ood_errors


def brute_force(entropy, label, t, removed=None):
    structure = np.ones((3, 3), int)
    pred = (entropy >= t) & (label != 255)
    if removed is not None:
        pred &= ~removed
    pred_ids, n_pred = nd_label(pred, structure)
    gt_ids, n_gt = nd_label(label == 1, structure)
    fp = sum(1 for k in range(1, n_pred + 1) if not np.any(label[pred_ids == k] == 1))
    fn = sum(1 for k in range(1, n_gt + 1) if not np.any(pred[gt_ids == k]))
    road = label == 0
    return {"TP": n_gt - fn, "FP": fp, "FN": fn, "road_pixels": int(road.sum()),
            "road_missed": int((road & pred).sum())}


def random_frame(rng, shape=(64, 80)):
    label = np.zeros(shape, np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, shape[0] - 10), rng.integers(0, shape[1] - 10)
        label[y:y + rng.integers(1, 10), x:x + rng.integers(1, 10)] = 1
    label[:8] = 255
    entropy = np.clip(rng.random(shape) * 0.6 + 0.35 * (label == 1), 0, 1).astype(np.float32)
    return entropy, label


def test_counts_match_brute_force(rng):
    for _ in range(5):
        entropy, label = random_frame(rng)
        for t in (0.3, 0.5, 0.7):
            assert meta_ood_errors(entropy, label, t) == brute_force(entropy, label, t)


def test_removed_segments(rng):
    entropy, label = random_frame(rng)
    t = 0.5
    pred_ids, n = nd_label((entropy >= t) & (label != 255), np.ones((3, 3), int))
    removed = np.isin(pred_ids, np.arange(1, n + 1, 2))  # drop every other segment
    got = meta_ood_errors(entropy, label, t, removed_mask=removed)
    assert got == brute_force(entropy, label, t, removed)
    assert got["FP"] <= meta_ood_errors(entropy, label, t)["FP"]


def test_hand_computed_case():
    label = np.zeros((10, 10), np.uint8)
    label[1:3, 1:3] = 1  # GT A, detected via a diagonal-connected prediction
    label[7:9, 7:9] = 1  # GT B, missed -> FN
    entropy = np.zeros((10, 10), np.float32)
    entropy[2, 2] = entropy[3, 3] = 0.9  # one segment (8-connected) touching A
    entropy[5, 0] = 0.9  # isolated false positive on road
    label[0, 9] = 255
    entropy[0, 9] = 0.9  # on void: ignored
    got = meta_ood_errors(entropy, label, 0.5)
    assert got == {"TP": 1, "FP": 1, "FN": 1, "road_pixels": 100 - 8 - 1, "road_missed": 2}
    m = DetectionMetrics(thresholds=(0.5, 0.95))
    m.update(entropy, label)
    rows = m.compute()["per_threshold"]
    assert rows[0]["F1"] == pytest.approx(2 / 4) and rows[0]["miss_rate"] == pytest.approx(2 / 91)
    assert rows[1]["TP"] == 0 and rows[1]["FN"] == 2 and rows[1]["miss_rate"] == 0


def test_merge_and_bad_input(rng):
    frames = [random_frame(rng) for _ in range(3)]
    whole, a, b = DetectionMetrics(), DetectionMetrics(), DetectionMetrics()
    for i, (e, y) in enumerate(frames):
        whole.update(e, y)
        (a if i == 0 else b).update(e, y)
    assert a.merge(b).compute() == whole.compute()
    e, y = frames[0]
    with pytest.raises(OodsegError, match="unknown label values"):
        meta_ood_errors(e, np.full(y.shape, 7, np.uint8), 0.5)
    with pytest.raises(OodsegError, match="removed_mask"):
        meta_ood_errors(e, y, 0.5, removed_mask=np.zeros((3, 3), bool))
