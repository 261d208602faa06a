"""MetricState: declared state merges and all-reduces by its reductions (hand-computed two-rank case),
and for every metric merging two halves of the frames equals one pass."""
import numpy as np
import pytest
import torch

from oodseg import distributed
from oodseg.errors import OodsegError
from oodseg.metrics import (CalibrationMetrics, ComponentMetrics, DetectionMetrics, PixelMetrics,
                            SegmentationMetrics)
from oodseg.metrics.quantization import Float16Audit
from oodseg.metrics.smiyc import SmiycPixelMetrics
from oodseg.metrics.state import MetricState
from oodseg.metrics.tally import ScoreTally


class Toy(MetricState):
    SETTINGS = ("k",)

    def __init__(self, k=2, n=0, total=0.0, vec=(0, 0), rows=(), low=np.inf, high=(-np.inf, -np.inf)):
        self.k = k
        self.add_state("n", n, "sum")
        self.add_state("total", total, "sum")
        self.add_state("vec", np.array(vec, np.int64), "sum")
        self.add_state("rows", list(rows), "cat")
        self.add_state("low", low, "min")
        self.add_state("high", np.array(high, np.float32), "max")
        self.add_state("inner", ScoreTally(channels=1, mode="streaming", bits=10), "merge")


def test_merge_follows_declared_reductions():
    a = Toy(n=3, total=1.5, vec=(1, 2), rows=["a"], low=4.0, high=(1, 7))
    b = Toy(n=4, total=0.25, vec=(10, 20), rows=["b", "c"], low=2.0, high=(5, 3))
    a.inner.add(np.array([1.0], np.float32), np.zeros(1, np.uint8))
    b.inner.add(np.array([1.0, 2.0], np.float32), np.zeros(2, np.uint8))
    assert a.merge(b) is a
    assert (a.n, a.total, a.vec.tolist(), a.rows, a.low, a.high.tolist()) == (7, 1.75, [11, 22], ["a", "b", "c"],
                                                                               2.0, [5.0, 7.0])
    assert a.inner.total().tolist() == [3]
    with pytest.raises(OodsegError, match="merge: Toy differ in k"):
        a.merge(Toy(k=3))
    with pytest.raises(OodsegError, match="expected a Toy"):
        a.merge(PixelMetrics())


def test_all_reduce_over_two_fake_ranks(monkeypatch):
    """Rank 0's view: the other rank holds ``other``; sums add, lists concatenate in rank order, extremes."""
    other = Toy(n=5, total=2.0, vec=(3, 4), rows=["z"], low=-1.0, high=(9, 0))
    other.inner.add(np.array([3.0], np.float32), np.zeros(1, np.uint8))
    sums = iter([other.n, other.total, other.vec, other.inner.counts])
    gathers = iter([other.rows, other.low, other.high])

    def all_reduce_sum(tensor):
        tensor += torch.as_tensor(next(sums), dtype=tensor.dtype).reshape(tensor.shape)
        return tensor

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce_sum)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [obj, next(gathers)])
    mine = Toy(n=1, total=0.5, vec=(1, 1), rows=["a"], low=0.0, high=(1, 2))
    mine.inner.add(np.array([1.0, 3.0], np.float32), np.zeros(2, np.uint8))
    mine.all_reduce()
    assert (mine.n, mine.total, mine.vec.tolist(), mine.rows, mine.low, mine.high.tolist()) == (
        6, 2.5, [4, 5], ["a", "z"], -1.0, [9.0, 2.0])
    assert type(mine.n) is int and type(mine.total) is float
    assert mine.inner.total().tolist() == [3]


def _frames(rng, n=4):
    label = (rng.random((n, 24, 24)) < 0.25).astype(np.uint8)
    label[:, :2] = 255
    score = (rng.random((n, 24, 24)) + 0.6 * (label == 1)).astype(np.float32)
    return score, label


def _semantic(rng, n=4):
    label = rng.integers(0, 3, (n, 24, 24)).astype(np.uint8)
    label[:, :2] = 255
    label[:, 5:8, 5:8] = 254
    prediction = np.where(rng.random(label.shape) < 0.7, np.minimum(label, 2), rng.integers(0, 3, label.shape))
    probs = rng.dirichlet(np.ones(3), size=(n, 24, 24)).transpose(0, 3, 1, 2).astype(np.float32)
    return prediction.astype(np.int64), label, probs


CASES = {
    "pixel-exact": (lambda: PixelMetrics(mode="exact", aggregate="per_image"), "ood", lambda m, s, y: m.update(s, y)),
    "pixel-streaming": (lambda: PixelMetrics(mode="streaming"), "ood", lambda m, s, y: m.update(s, y)),
    "smiyc": (lambda: SmiycPixelMetrics(mode="streaming"), "ood", lambda m, s, y: m.update(s, y)),
    "component": (lambda: ComponentMetrics(min_pred=2, min_gt=2), "ood", lambda m, s, y: m.update(s, y, 0.9)),
    "detection": (DetectionMetrics, "ood", lambda m, s, y: m.update(s, y)),
    "float16": (lambda: Float16Audit("m"), "ood", lambda m, s, y: m.update(s, y)),
    "segmentation": (lambda: SegmentationMetrics(num_classes=3, ood_thresholds=(0.5,)), "semantic",
                     lambda m, p, y, probs: m.update(p, y, probs.max(axis=1))),
    "calibration": (lambda: CalibrationMetrics(mode="exact"), "semantic",
                    lambda m, p, y, probs: m.update(1 - probs.max(axis=1), probs, np.where(y == 254, 255, y))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merging_halves_equals_one_pass(case, rng):
    make, kind, update = CASES[case]
    data = _frames(rng) if kind == "ood" else _semantic(rng)
    whole, first, second = make(), make(), make()
    update(whole, *data)
    update(first, *(x[:2] for x in data))
    update(second, *(x[2:] for x in data))
    result = (lambda m: m.summary()) if case == "float16" else (lambda m: m.compute())
    assert result(first.merge(second)) == result(whole)


@pytest.mark.parametrize("weighted", [False, True])
def test_streaming_tally_pickles_its_non_empty_bins_only(rng, weighted):
    """A worker sends its streaming tally as the non-empty rows: far smaller than the 2**20-row state,
    and unpickled to the same counts and sums."""
    import pickle

    tally = ScoreTally(channels=2, mode="streaming", weighted=weighted)
    values = rng.random(5000).astype(np.float32)
    tally.add(values, (values > 0.9).astype(np.int64), rng.random(5000) if weighted else None)
    data = pickle.dumps(tally)
    back = pickle.loads(data)
    assert len(data) < tally.counts.nbytes // 50
    assert np.array_equal(back.counts, tally.counts) and back.counts.flags.c_contiguous
    assert (back.sums is None) if not weighted else np.array_equal(back.sums, tally.sums)
    assert back.merge(tally).total().tolist() == (2 * tally.total()).tolist()
