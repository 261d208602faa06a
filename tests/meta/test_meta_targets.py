"""Segment IoU targets on hand-computed cases and against a brute-force loop."""
import numpy as np
import pytest

from oodseg.meta.segments import class_segments, threshold_segments
from oodseg.meta.targets import segment_iou


def test_meta_ood_segments_hand_computed():
    # score >= 0.5 gives two segments; GT OoD (1) has two components, one touching segment 1.
    score = np.array([[0.9, 0.9, 0.0, 0.0, 0.0],
                      [0.9, 0.0, 0.0, 0.0, 0.8],
                      [0.0, 0.0, 0.0, 0.0, 0.8]])
    label = np.array([[1, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0],
                      [0, 0, 0, 1, 0]], dtype=np.uint8)
    ids, n = threshold_segments(score, 0.5)
    assert n == 2
    iou = segment_iou(ids, n, np.ones(n, dtype=int), label)
    # segment {(0,0),(0,1),(1,0)} vs GT component {(0,0),(1,0),(1,1)}: |∩| = 2, |∪| = 4
    assert iou[ids[0, 0] - 1] == pytest.approx(2 / 4)
    # segment {(1,4),(2,4)} touches no GT pixel (the GT pixel (2,3) is adjacent, not overlapping)
    assert iou[ids[1, 4] - 1] == 0


def test_void_pixels_leave_the_segment_and_all_void_segments_have_no_target():
    prediction = np.array([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, 2]])
    gt = np.array([[0, 255, 1, 1],
                   [0, 0, 255, 255],
                   [255, 255, 255, 255]], dtype=np.uint8)
    ids, n, cls = class_segments(prediction)
    iou = segment_iou(ids, n, cls, gt)
    by_class = dict(zip(cls, iou))
    assert by_class[0] == pytest.approx(1.0)      # 3 non-void pixels, all class 0, GT component = those 3
    assert by_class[1] == pytest.approx(1.0)      # non-void part (0,2),(0,3) equals the GT component
    assert np.isnan(by_class[2])                  # only void pixels


def test_gt_components_touching_the_segment_are_united():
    prediction = np.zeros((3, 7), dtype=int)
    prediction[1, 1:6] = 1                           # one class-1 segment, a line of 5 pixels
    gt = np.zeros((3, 7), dtype=np.uint8)
    gt[0:2, 0:2] = 1                                 # GT component A (4 px) overlaps at (1,1)
    gt[1:3, 5:7] = 1                                 # GT component B (4 px) overlaps at (1,5)
    gt[2, 3] = 1                                     # GT component C (1 px), not overlapping
    ids, n, cls = class_segments(prediction)
    iou = segment_iou(ids, n, cls, gt)
    k = ids[1, 3] - 1
    # ∩ = 2, ∪ = 5 + 4 + 4 - 2 = 11 (C is not part of G_k)
    assert iou[k] == pytest.approx(2 / 11)


def brute_force_iou(ids, classes, gt):
    from skimage.measure import label as sk_label

    out = []
    for k, c in enumerate(classes, start=1):
        seg = (ids == k) & (gt != 255)
        comps = sk_label(gt == c, connectivity=2)
        touching = set(np.unique(comps[seg])) - {0}
        g = np.isin(comps, list(touching))
        union = (seg | g).sum()
        out.append((seg & g).sum() / union if seg.any() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_class_segment_iou_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    base = np.repeat(np.repeat(rng.integers(0, 3, (5, 6)), 4, 0), 4, 1)
    prediction = np.where(rng.random(base.shape) < 0.1, rng.integers(0, 3, base.shape), base)
    gt = np.where(rng.random(base.shape) < 0.15, rng.integers(0, 3, base.shape), base).astype(np.uint8)
    gt[rng.random(base.shape) < 0.05] = 255
    ids, n, cls = class_segments(prediction)
    np.testing.assert_allclose(segment_iou(ids, n, cls, gt), brute_force_iou(ids, cls, gt), equal_nan=True)
