"""Float16Audit: merges within and across frames against a brute-force count of distinct values over
all frames, the measured AP/AUROC against scikit-learn, and merging audits of halves."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from oodseg.metrics.quantization import Float16Audit, distinct_count


def _brute_force_alters(frames) -> bool:
    """float16 alters the pooled ranking ⇔ it has fewer distinct values than float32 over all pixels."""
    pooled = np.concatenate([f.ravel() for f in frames]).astype(np.float32) + np.float32(0)  # -0 == 0
    return np.unique(pooled.astype(np.float16)).size < np.unique(pooled).size


@pytest.mark.parametrize("case", range(12))
def test_alters_ranking_matches_the_pooled_distinct_values(case):
    rng = np.random.default_rng(case)
    scale = [1e-3, 1.0, 300.0, 1e4][case % 4]
    if case < 4:    # float16-exact values: never merged, whatever the frames
        frames = [(rng.normal(size=(6, 7)) * scale).astype(np.float16).astype(np.float32) for _ in range(3)]
    elif case < 8:  # continuous values: merged
        frames = [(rng.normal(size=(30, 40)) * scale).astype(np.float32) for _ in range(3)]
    else:           # a float16 grid per frame, shifted by less than a float16 step in one frame: only across frames
        grid = np.arange(-20, 20, dtype=np.float16).astype(np.float32).reshape(5, 8) * np.float32(0.25)
        frames = [grid, grid + np.float32(1e-4 if case % 2 else 0.0)]
    audit = Float16Audit("m")
    for frame in frames:
        audit.update(frame)
    assert audit.alters_ranking == _brute_force_alters(frames)
    merged_frames = sum(np.unique(f.astype(np.float16)).size < np.unique(f).size for f in frames)
    assert audit.merged_frames == merged_frames
    assert (audit.warning() is None) == (not audit.alters_ranking)


def test_warning_names_method_frames_levels_and_metrics(rng):
    score = (0.9 + 1e-3 * rng.random((40, 50))).astype(np.float32)   # a band narrower than float16's step
    label = (rng.random((40, 50)) < 0.3).astype(np.uint8)
    label[0, :5] = 255
    audit = Float16Audit("odin")
    audit.update(score, label)
    audit.update(np.float32(1.5) + np.zeros((40, 50), np.float32))   # an unlabelled, constant frame
    s = audit.summary()
    valid = label != 255
    for dtype in ("float32", "float16"):
        rounded = score.astype(dtype).astype(np.float64)[valid]
        assert s["AP"][dtype] == pytest.approx(average_precision_score(label[valid] == 1, rounded), abs=1e-12)
        assert s["AUROC"][dtype] == pytest.approx(roc_auc_score(label[valid] == 1, rounded), abs=1e-12)
    levels = (distinct_count(score), distinct_count(score.astype(np.float16)))
    assert s["median_levels"] == {"float32": (levels[0] + 1) / 2, "float16": (levels[1] + 1) / 2}
    assert s["frames"] == 2 and s["frames_merged"] == 1
    assert audit.warning() == (
        f"odin: float16 storage merges distinct scores on 1 of 2 frames (median distinct values per frame "
        f"{(levels[0] + 1) / 2:.0f} as float32 → {(levels[1] + 1) / 2:.0f} as float16); AP "
        f"{s['AP']['float32']:.4f} → {s['AP']['float16']:.4f}, AUROC {s['AUROC']['float32']:.4f} → "
        f"{s['AUROC']['float16']:.4f} on the labelled frames; store float32 (the default) to keep the ranking")


def test_merging_halves_equals_one_pass(rng):
    frames = [(rng.normal(size=(8, 9)) * 10).astype(np.float32) for _ in range(4)]
    labels = [(rng.random((8, 9)) < 0.4).astype(np.uint8) for _ in range(4)]
    whole, first, second = Float16Audit("m"), Float16Audit("m"), Float16Audit("m")
    for i, (frame, label) in enumerate(zip(frames, labels)):
        whole.update(frame, label)
        (first if i < 2 else second).update(frame, label)
    assert first.merge(second).summary() == whole.summary()


def test_no_labels_no_metrics_and_no_false_alarm_at_zero():
    audit = Float16Audit("m")
    audit.update(np.array([[0.0, -0.0], [1.0, -2.0]], np.float32))
    audit.update(np.array([[-0.0, 0.5]], np.float32))
    s = audit.summary()
    assert s["AP"] is None and s["AUROC"] is None and not s["alters_ranking"] and audit.warning() is None
