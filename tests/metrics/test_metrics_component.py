"""Component metrics (SMIYC sIoU/PPV/F1) on hand-computed cases and against a per-component loop."""
import numpy as np
import pytest
from scipy.ndimage import label as nd_label

from oodseg.errors import OodsegError
from oodseg.metrics.component import ComponentMetrics, component_metrics, frame_component_scores


def reference_frame_scores(score, label, threshold, min_pred, min_gt):
    """Straightforward per-component loop with np.isin (the official benchmark's formulation)."""
    structure = np.ones((3, 3), int)
    pred_mask = (score > threshold) & (label != 255)
    gt_inst, n_gt = nd_label(label == 1, structure)
    pred_inst, n_pred = nd_label(pred_mask, structure)
    for comp in range(1, n_pred + 1):
        if np.sum(pred_inst == comp) < min_pred:
            pred_inst[pred_inst == comp] = 0
    label = label.copy()
    for comp in range(1, n_gt + 1):
        if np.sum(gt_inst == comp) < min_gt:
            label[gt_inst == comp] = 255
    roi = label < 255
    gt, pred = gt_inst[roi], pred_inst[roi]
    siou = []
    for i in np.unique(gt[gt > 0]):
        loc = pred[gt == i]
        touching = np.unique(loc[loc != 0])
        inter = np.sum(np.isin(loc, touching))
        adjustment = np.sum(~np.isin(gt, [0, i]) & np.isin(pred, touching))
        union = np.sum(np.isin(pred, touching)) + np.sum(gt == i) - inter - adjustment
        siou.append(inter / union)
    ppv = []
    for i in np.unique(pred[pred > 0]):
        loc = gt[pred == i]
        touching = np.unique(loc[loc != 0])
        ppv.append(np.sum(np.isin(loc, touching)) / np.sum(pred == i))
    return np.array(siou), np.array(ppv)


def test_one_prediction_over_two_gt_boxes():
    label = np.zeros((30, 40), np.uint8)
    label[0:10, 0:10] = 1
    label[0:10, 14:24] = 1
    score = np.zeros((30, 40), np.float32)
    score[0:12, 0:24] = 1.0  # 288 px: both boxes, the 40 px gap and two rows of 24 px
    siou, ppv = frame_component_scores(score, label, 0.5, 0, 0)
    # |k ∩ P| = 100, |(k ∪ P) \ other box| = 288 - 100 = 188
    np.testing.assert_allclose(siou, [100 / 188, 100 / 188], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ppv, [200 / 288], rtol=0, atol=1e-15)
    m = component_metrics(score, label, 0.5, track="obstacle")
    tau = np.linspace(0.25, 0.75, 11)
    assert m["TP"] == [2 if t <= 100 / 188 else 0 for t in tau]
    assert m["FP"] == [1 if 200 / 288 < t else 0 for t in tau]
    f1 = [2 * tp / (2 * tp + fn + fp) for tp, fn, fp in zip(m["TP"], m["FN"], m["FP"])]
    assert m["mean_F1"] == pytest.approx(np.mean(f1))
    assert m["sIoU"] == pytest.approx(100 / 188) and m["PPV"] == pytest.approx(200 / 288)


def test_threshold_is_strict():
    label = np.zeros((20, 20), np.uint8)
    label[5:10, 5:10] = 1
    score = np.zeros((20, 20), np.float32)
    score[5:10, 5:10] = 0.5
    siou, ppv = frame_component_scores(score, label, 0.5, 0, 0)
    assert siou.tolist() == [0.0] and ppv.size == 0


def test_small_gt_becomes_void_and_small_prediction_removed():
    label = np.zeros((40, 40), np.uint8)
    label[0:3, 0:3] = 1  # 9 px GT < min_gt=10 -> void
    label[20:30, 20:30] = 1  # 100 px GT kept
    score = np.zeros((40, 40), np.float32)
    score[0:3, 0:3] = 1  # prediction entirely on the voided GT: size 9 >= 5 but vanishes from the ROI
    score[20:30, 20:30] = 1
    score[35:37, 0:2] = 1  # 4 px false positive < min_pred=5 -> removed
    siou, ppv = frame_component_scores(score, label, 0.5, min_pred=5, min_gt=10)
    assert siou.tolist() == [1.0] and ppv.tolist() == [1.0]
    siou, ppv = frame_component_scores(score, label, 0.5, min_pred=0, min_gt=0)
    assert sorted(siou.tolist()) == [1.0, 1.0] and sorted(ppv.tolist()) == [0.0, 1.0, 1.0]


def test_diagonal_contact_is_connected():
    label = np.zeros((10, 10), np.uint8)
    label[2, 2] = label[3, 3] = 1  # one 8-connected GT component of 2 px
    score = np.zeros((10, 10), np.float32)
    score[3, 3] = score[4, 4] = 1.0  # one predicted component, touching at (3, 3)
    siou, ppv = frame_component_scores(score, label, 0.5, 0, 0)
    assert siou.tolist() == [1 / 3] and ppv.tolist() == [0.5]


def test_predictions_on_void_ignored():
    label = np.full((10, 10), 255, np.uint8)
    label[:, :5] = 0
    label[2:4, 2:4] = 1
    score = np.zeros((10, 10), np.float32)
    score[2:4, 2:9] = 1.0  # spills onto void: only the ROI part counts
    siou, ppv = frame_component_scores(score, label, 0.5, 0, 0)
    assert siou.tolist() == [4 / 6] and ppv.tolist() == [4 / 6]


def random_frame(rng, shape=(96, 128)):
    label = np.zeros(shape, np.uint8)
    for _ in range(8):
        y, x = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
        h, w = rng.integers(1, 12, size=2)
        label[y:y + h, x:x + w] = 1
    label[rng.random(shape) < 0.02] = 255
    label[:, :6] = 255
    score = rng.random(shape).astype(np.float32) * 0.6 + 0.5 * (label == 1)
    return score, label


def test_against_loop_reference_on_random_maps(rng):
    for _ in range(6):
        score, label = random_frame(rng)
        for min_pred, min_gt in ((0, 0), (5, 10), (50, 10)):
            siou, ppv = frame_component_scores(score, label, 0.7, min_pred, min_gt)
            ref_siou, ref_ppv = reference_frame_scores(score, label, 0.7, min_pred, min_gt)
            np.testing.assert_allclose(siou, ref_siou, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ppv, ref_ppv, rtol=0, atol=1e-12)


def test_dataset_aggregation_and_merge(rng):
    frames = [random_frame(rng) for _ in range(4)]
    whole = ComponentMetrics(track="obstacle")
    first, second = ComponentMetrics(track="obstacle"), ComponentMetrics(track="obstacle")
    all_siou, all_ppv = [], []
    for i, (s, y) in enumerate(frames):
        whole.update(s, y, 0.7)
        (first if i < 2 else second).update(s, y, 0.7)
        r_siou, r_ppv = reference_frame_scores(s, y, 0.7, 50, 10)
        all_siou.append(r_siou)
        all_ppv.append(r_ppv)
    all_siou, all_ppv = np.concatenate(all_siou), np.concatenate(all_ppv)
    got = whole.compute()
    assert first.merge(second).compute() == got
    tau = np.linspace(0.25, 0.75, 11)
    tp = [(all_siou >= t).sum() for t in tau]
    fn = [(all_siou < t).sum() for t in tau]
    fp = [(all_ppv < t).sum() for t in tau]
    assert got["TP"] == tp and got["FN"] == fn and got["FP"] == fp
    f1 = [2 * a / (2 * a + b + c) for a, b, c in zip(tp, fn, fp)]
    assert got["mean_F1"] == pytest.approx(np.mean(f1), abs=1e-12)
    assert got["sIoU"] == pytest.approx(all_siou.mean()) and got["PPV"] == pytest.approx(all_ppv.mean())
    assert got["n_gt_components"] == all_siou.size and got["n_pred_components"] == all_ppv.size


def test_track_defaults_and_bad_input(rng):
    assert (ComponentMetrics().min_pred, ComponentMetrics().min_gt) == (500, 100)
    assert (ComponentMetrics(track="obstacle").min_pred, ComponentMetrics(track="obstacle").min_gt) == (50, 10)
    with pytest.raises(OodsegError, match="track"):
        ComponentMetrics(track="lanes")
    s, y = random_frame(rng)
    with pytest.raises(OodsegError, match="unknown label values"):
        component_metrics(s, np.where(y == 1, 7, y).astype(np.uint8), 0.5)
    with pytest.raises(OodsegError, match="does not match"):
        component_metrics(s, y[:, :-1], 0.5)
    with pytest.raises(OodsegError, match="NaN"):
        component_metrics(np.where(y == 1, np.nan, s), y, 0.5)


def test_components_touching_the_border_and_empty_masks(rng):
    """GT and predictions in the corners and along the edges (the labelled boxes end at the frame), a frame
    without predictions, one without GT: the per-component loop's numbers."""
    label = np.zeros((40, 60), np.uint8)
    label[:6, :9] = 1
    label[-5:, -7:] = 1
    label[:, 30] = 255
    score = rng.random((40, 60)).astype(np.float32) * 0.5
    score[:8, :4] = 0.9
    score[-3:, 20:] = 0.95
    no_gt = np.where(label == 1, 0, label).astype(np.uint8)
    for s, y in ((score, label), (np.zeros_like(score), label), (score, no_gt)):
        for min_pred, min_gt in ((0, 0), (5, 10)):
            siou, ppv = frame_component_scores(s, y, 0.7, min_pred, min_gt)
            ref_siou, ref_ppv = reference_frame_scores(s, y, 0.7, min_pred, min_gt)
            np.testing.assert_allclose(siou, ref_siou, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ppv, ref_ppv, rtol=0, atol=1e-12)


def test_any_split_merged_in_any_order_gives_the_official_aggregate_bit_for_bit(rng):
    """Frame sums added one after the other in frame order (positions), as the official aggregate:
    sum(np.sum(sIoU of a frame)) / count and the F1 of the τs summed in order, whatever the parts."""
    frames = [random_frame(rng) for _ in range(6)]
    results = [reference_frame_scores(s, y, 0.7, 50, 10) for s, y in frames]
    official_siou = sum(np.sum(siou) for siou, _ in results) / sum(len(siou) for siou, _ in results)
    official_ppv = sum(np.sum(ppv) for _, ppv in results) / sum(len(ppv) for _, ppv in results)
    for split in ([6], [1, 5], [3, 3], [2, 2, 2]):
        parts, start = [], 0
        for size in split:
            part = ComponentMetrics(track="obstacle")
            for i in range(start, start + size):
                part.update(*frames[i], 0.7, positions=[i])
            parts.append(part)
            start += size
        merged = parts[-1]
        for part in parts[-2::-1]:  # merged last to first: the positions restore the order
            merged.merge(part)
        got = merged.compute()
        assert got["sIoU"] == official_siou and got["PPV"] == official_ppv, split
        f1_sum = 0.0
        for f1 in got["F1_per_tau"]:
            f1_sum += f1
        assert got["mean_F1"] == f1_sum / 11
