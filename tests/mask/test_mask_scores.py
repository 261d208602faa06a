"""Mask-classification scores (SPEC §9) against hand-written numpy loops over queries, classes and pixels.

The references follow the authors' public code as read (commits in ``oodseg.scores.mask``): RbA's
``get_RbA`` on ``semantic_inference``, Mask2Anomaly's ``semantic_inference`` + ``anomaly_inference.py``,
Open-set-M2F's EAM / UNO evaluators, Maskomaly's ``anomaly_overlap.py`` and ``model.get_soft_mask``.
"""
import numpy as np
import pytest
import torch

from oodseg import scores
from oodseg.adapter import SegOutput
from oodseg.errors import OodsegError
from oodseg.mask_adapter import PROBABILITY_FLOOR, MaskAdapter


def _output(classes: np.ndarray, masks: np.ndarray, negative: bool = False) -> SegOutput:
    """A SegOutput as MaskAdapter builds it, from numpy class logits (B, Q, C') and mask logits (B, Q, h, w)."""
    known = classes.shape[2] - 1 - int(negative)
    p = _reference_p(classes, masks, known)
    return SegOutput(logits=torch.from_numpy(np.log(np.maximum(p, PROBABILITY_FLOOR))).float(),
                     extras={"class_logits": torch.from_numpy(classes).float(),
                             "mask_logits": torch.from_numpy(masks).float()})


def _softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_p(classes, masks, known, raw=False):
    """P (or L with raw=True) by explicit loops over batch, class, query."""
    b, q, _ = classes.shape
    out = np.zeros((b, known, *masks.shape[2:]))
    for i in range(b):
        for k in range(known):
            for j in range(q):
                weight = classes[i, j, k] if raw else _softmax(classes[i, j])[k]
                out[i, k] += weight * _sigmoid(masks[i, j])
    return out


def _reference_query_sum(classes, masks, known, confidence, start):
    """``start + Σ_q σ(m_q) · confidence(softmax(c_q))`` by a loop over batch and queries."""
    b, q, _ = classes.shape
    out = np.full((b, *masks.shape[2:]), float(start))
    for i in range(b):
        for j in range(q):
            out[i] += confidence(_softmax(classes[i, j])) * _sigmoid(masks[i, j])
    return out


def _reference_eam(classes, masks, known):
    return _reference_query_sum(classes, masks, known, lambda p: -p[:known].max(), 1.0)


def _reference_uno(classes, masks, known):
    return _reference_query_sum(classes, masks, known, lambda p: p[known] - p[:known].max(), 0.0)


def _reference_m2a(classes, masks, known, refine_classes):
    """Mask2Anomaly: 1 − max over P's K channels and one ``s_q σ(m_q)`` channel per confident refining query;
    when more than one such channel exists, pixels where their max is >= 0.5 are set to 0."""
    p = _reference_p(classes, masks, known)
    out = np.zeros((classes.shape[0], *masks.shape[2:]))
    for i in range(classes.shape[0]):
        channels, extra = list(p[i]), []
        for j in range(classes.shape[1]):
            prob = _softmax(classes[i, j])
            label = int(np.argmax(prob))
            if label != classes.shape[2] - 1 and prob[label] > 0.95 and label in refine_classes:
                extra.append(prob[label] * _sigmoid(masks[i, j]))
        out[i] = 1 - np.max(np.stack(channels + extra), axis=0)
        if len(extra) > 1:
            out[i] = out[i] * (1 - (np.max(np.stack(extra), axis=0) >= 0.5))
    return out


CASES = [  # (batch, queries, classes K, h, w, mask logit scale)
    (2, 5, 3, 4, 6, 2.0),
    (1, 1, 3, 5, 5, 2.0),    # Q = 1
    (2, 4, 1, 3, 4, 2.0),    # K = 1
    (1, 6, 4, 4, 4, 200.0),  # masks saturated at 0 / 1
]


@pytest.mark.parametrize("batch,queries,known,h,w,scale", CASES)
def test_scores_match_numpy_loops(rng, batch, queries, known, h, w, scale):
    classes = rng.normal(size=(batch, queries, known + 1)) * 3
    masks = rng.normal(size=(batch, queries, h, w)) * scale
    if scale > 100:  # saturated masks: ±200 makes σ(m) exactly 0 or 1 in float32
        masks = np.where(masks > 0, scale, -scale)
    out = _output(classes, masks)
    p = _reference_p(classes, masks, known)
    l = _reference_p(classes, masks, known, raw=True)
    maps = scores.compute([scores.get("rba"), scores.get("rba", aggregate="logits"), scores.get("m2a", refine=False),
                           scores.get("eam")], out)
    np.testing.assert_allclose(maps["rba"].numpy(), -np.tanh(p).sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["rba[aggregate=logits]"].numpy(), -np.tanh(l).sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["m2a[refine=False]"].numpy(), 1 - p.max(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["eam"].numpy(), _reference_eam(classes, masks, known), rtol=1e-5, atol=1e-5)
    if scale > 100:
        assert set(np.unique(torch.sigmoid(out.extras["mask_logits"]).numpy())) <= {0.0, 1.0}


@pytest.mark.parametrize("batch,queries,known,h,w,scale", CASES)
def test_uno_matches_numpy_loop(rng, batch, queries, known, h, w, scale):
    classes = rng.normal(size=(batch, queries, known + 2)) * 3
    masks = rng.normal(size=(batch, queries, h, w)) * scale
    out = _output(classes, masks, negative=True)
    np.testing.assert_allclose(scores.get("uno")(out).numpy(), _reference_uno(classes, masks, known),
                               rtol=1e-5, atol=1e-5)
    # EAM on a negative-class model: max over the K known classes only
    np.testing.assert_allclose(scores.get("eam")(out).numpy(), _reference_eam(classes, masks, known),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch,queries,known,h,w,scale", CASES)
def test_m2a_refinement_matches_numpy_loop(rng, batch, queries, known, h, w, scale):
    classes = rng.normal(size=(batch, queries, known + 1)) * 3
    classes[:, :2, known - 1] += 12.0  # up to two confident queries of the last class (Q = 1: one, no veto)
    masks = rng.normal(size=(batch, queries, h, w)) * scale
    if scale > 100:
        masks = np.where(masks > 0, scale, -scale)
    out = _output(classes, masks)
    refined = scores.get("m2a", refine_from=known - 1, refine_to=known - 1)(out).numpy()
    expected = _reference_m2a(classes, masks, known, [known - 1])
    np.testing.assert_allclose(refined, expected, rtol=1e-5, atol=1e-5)
    if queries >= 2:
        assert (refined == 0).any()  # the veto fired


def test_m2a_refines_with_cityscapes_stuff_classes_by_default(rng):
    classes = rng.normal(size=(1, 5, 20))
    classes[0, 0, 8] = classes[0, 1, 10] = 15.0  # vegetation and sky: refining
    classes[0, 2, 0] = classes[0, 3, 13] = 15.0  # road and car: not refining
    masks = np.full((1, 5, 4, 4), -9.0)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 3, 3] = 9.0  # one row each
    out = _output(classes, masks)
    refined = scores.get("m2a")(out).numpy()
    np.testing.assert_allclose(refined, _reference_m2a(classes, masks, 19, range(2, 11)), rtol=1e-5, atol=1e-6)
    assert (refined[0, :2] == 0).all() and (refined[0, 2:] > 0).all()
    with pytest.raises(OodsegError, match="m2a: refine_to=10 names a class beyond the model's K=3") as info:
        scores.get("m2a")(_output(classes[..., :4], masks))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("params", [{"refine": 1}, {"refine_from": 2.0}, {"refine_to": -1}, {"refine_from": True},
                                    {"refine_from": 5, "refine_to": 4}, {"refine_to": "10"}])
def test_m2a_bad_parameters_are_one_line_errors(params):
    with pytest.raises(OodsegError, match="m2a: refine") as info:
        scores.get("m2a", **params)
    assert "\n" not in str(info.value)


def test_logits_only_scores_apply_to_log_p(rng):
    classes, masks = rng.normal(size=(1, 4, 4)) * 2, rng.normal(size=(1, 4, 3, 5))
    out = _output(classes, masks)
    p = _reference_p(classes, masks, 3)
    maps = scores.compute(["msp", "max_logit", "energy"], out)
    np.testing.assert_allclose(maps["msp"].numpy(), 1 - p.max(1) / p.sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["max_logit"].numpy(), -np.log(p.max(1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["energy"].numpy(), -np.log(p.sum(1)), rtol=1e-5, atol=1e-5)


def test_uno_without_negative_class_is_one_line_error(rng):
    out = _output(rng.normal(size=(1, 3, 4)), rng.normal(size=(1, 3, 2, 2)))
    with pytest.raises(OodsegError, match="uno: the model has no negative class") as info:
        scores.get("uno")(out)
    assert "\n" not in str(info.value)


def test_mask_scores_on_a_per_pixel_output_are_one_line_errors():
    out = SegOutput(logits=torch.randn(1, 4, 3, 3))
    for name in ("rba", "m2a", "eam", "uno"):
        with pytest.raises(OodsegError, match="mask-classification model") as info:
            scores.get(name)(out)
        assert "\n" not in str(info.value)


# --- Maskomaly ------------------------------------------------------------------------------------

def _maskomaly_data(rng, frames=3, queries=6, planted=4, size=(8, 8)):
    """Outputs whose query ``planted`` lights up exactly on the anomaly pixels, and their OoD labels."""
    outs, labels = [], []
    for _ in range(frames):
        label = np.zeros((1, *size), dtype=np.int64)
        top, left = rng.integers(0, size[0] - 3, size=2)
        label[0, top:top + 3, left:left + 3] = 1
        label[0, 0, :] = 255
        masks = rng.normal(size=(1, queries, *size)) * 2
        masks[0, planted] = np.where(label[0] == 1, 4.0, -4.0) + rng.normal(size=size) * 0.5
        outs.append(_output(rng.normal(size=(1, queries, 3)), masks))
        labels.append(torch.from_numpy(label))
    return outs, labels


def _reference_maskomaly_overlap(outs, labels):
    """anomaly_overlap.py: per frame, IoU of σ(m_q) > 0.9 with the anomaly pixels outside void; mean over frames."""
    rows = []
    for out, label in zip(outs, labels):
        for i in range(label.shape[0]):
            lab = label[i].numpy()
            if not (lab == 1).any():
                continue
            row = []
            for j in range(out.extras["mask_logits"].shape[1]):
                on = _sigmoid(out.extras["mask_logits"][i, j].numpy().astype(np.float64)) > 0.9
                hits = np.count_nonzero(on & (lab == 1))
                row.append(hits / max(np.count_nonzero(on & (lab != 255)) + np.count_nonzero(lab == 1) - hits, 1))
            rows.append(row)
    return np.mean(rows, axis=0)


def _reference_maskomaly(classes, masks, ranking, take):
    """model.py get_soft_mask: 0.6 · rejection (with borders) + 0.4 · max over the top queries of s_q σ(m_q)."""
    out = np.zeros((classes.shape[0], *masks.shape[2:]))
    void = classes.shape[2] - 1
    for i in range(classes.shape[0]):
        prob = np.stack([_softmax(row) for row in classes[i]])
        sig = _sigmoid(masks[i])
        soft, soft2 = np.ones(masks.shape[2:]), np.zeros(masks.shape[2:])
        for q in ranking[:take]:
            soft2 = np.maximum(soft2, sig[q] * prob[q].max())
        for q in range(classes.shape[1]):
            top = int(np.argmax(prob[q]))
            if top != void and prob[q, top] > 0.7:
                soft = np.minimum(soft, 1 - sig[q] * prob[q, top])
        positive = sig[np.argmax(prob, axis=1) != void]
        for a in range(len(positive)):
            for b in range(a + 1, len(positive)):
                soft = np.minimum(soft, np.clip(1 - np.logical_and(positive[a] > 0.1, positive[b] > 0.1), 0, 1))
        out[i] = 0.6 * soft + 0.4 * soft2
    return out


def test_maskomaly_ranking_is_fitted_and_deterministic(rng):
    outs, labels = _maskomaly_data(rng)
    first = scores.get("maskomaly", queries=1).fit(outs, labels)
    second = scores.get("maskomaly", queries=1).fit(list(reversed(outs)), list(reversed(labels)))
    assert first.ranking[0] == 4
    assert torch.equal(first.ranking, second.ranking)
    np.testing.assert_allclose(first.overlap.numpy(), _reference_maskomaly_overlap(outs, labels), rtol=1e-6)
    restored = scores.get("maskomaly", queries=1).load_state_dict(first.state_dict())
    for out in outs:
        classes, masks = (out.extras[k].double().numpy() for k in ("class_logits", "mask_logits"))
        expected = _reference_maskomaly(classes, masks, first.ranking.tolist(), 1)
        np.testing.assert_allclose(first(out).numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(restored(out).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,queries,known,h,w,scale", CASES)
def test_maskomaly_matches_numpy_loop(rng, batch, queries, known, h, w, scale):
    classes = rng.normal(size=(batch, queries, known + 1)) * 3
    classes[:, ::2, 0] += 6.0  # confident inlier queries that reject
    masks = rng.normal(size=(batch, queries, h, w)) * scale
    if scale > 100:
        masks = np.where(masks > 0, scale, -scale)
    out = _output(classes, masks)
    label = torch.zeros(batch, h, w, dtype=torch.int64)
    label[:, 0, 0], label[:, -1, :] = 1, 255
    scorer = scores.get("maskomaly", queries=min(2, queries)).fit([out], [label])
    np.testing.assert_allclose(scorer.overlap.numpy(), _reference_maskomaly_overlap([out], [label]), rtol=1e-6)
    expected = _reference_maskomaly(classes, masks, scorer.ranking.tolist(), min(2, queries))
    np.testing.assert_allclose(scorer(out).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_maskomaly_ties_keep_query_order(rng):
    masks = np.zeros((1, 3, 4, 4))
    label = torch.zeros(1, 4, 4, dtype=torch.int64)
    label[0, 0, 0] = 1
    scorer = scores.get("maskomaly").fit([_output(rng.normal(size=(1, 3, 3)), masks)], [label])
    assert scorer.ranking.tolist() == [0, 1, 2]


def test_maskomaly_refuses_data_without_anomalies_and_unfitted_use(rng):
    outs, labels = _maskomaly_data(rng)
    inliers = [torch.where(lab == 1, torch.zeros_like(lab), lab) for lab in labels]
    with pytest.raises(OodsegError, match="no anomaly pixels"):
        scores.get("maskomaly").fit(outs, inliers)
    with pytest.raises(OodsegError, match="not OoD labels"):
        scores.get("maskomaly").fit(outs, [lab * 7 for lab in labels])
    with pytest.raises(OodsegError, match="maskomaly: not fitted") as info:
        scores.get("maskomaly")(outs[0])
    assert "\n" not in str(info.value)


# --- the adapter on a module returning the two tensors --------------------------------------------

class _Queries(torch.nn.Module):
    """Returns fixed class/mask logits per query (as a tuple, dict or with a wrong shape)."""

    def __init__(self, kind="tuple", queries=4, columns=4):
        super().__init__()
        self.kind = kind
        self.classes = torch.nn.Parameter(torch.randn(queries, columns))
        self.masks = torch.nn.Conv2d(3, queries, 1)

    def forward(self, images):
        masks = self.masks(images[:, :, ::4, ::4])
        classes = self.classes.expand(images.shape[0], -1, -1)
        if self.kind == "dict":
            return {"class_queries_logits": classes, "masks_queries_logits": masks}
        if self.kind == "no-masks":
            return (classes,)
        if self.kind == "wrong-queries":
            return classes, masks[:, :-1]
        return classes, masks


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_adapter_aggregates_a_generic_module(kind):
    model = _Queries(kind)
    adapter = MaskAdapter(model)
    images = torch.rand(2, 3, 16, 20)
    out = adapter(images)
    classes, masks = model.classes.detach().expand(2, -1, -1).numpy(), model.masks(images[:, :, ::4, ::4]).detach().numpy()
    assert adapter.num_classes == 3 and adapter.num_queries == 4
    np.testing.assert_allclose(out.logits.exp().detach().numpy(), _reference_p(classes, masks, 3), rtol=1e-5)
    assert out.extras["class_logits"].shape == (2, 4, 4) and out.extras["mask_logits"].shape == (2, 4, 4, 5)


def test_adapter_bad_outputs_are_one_line_errors():
    with pytest.raises(OodsegError, match="no mask logits") as info:
        MaskAdapter(_Queries("no-masks"))
    assert "\n" not in str(info.value)
    with pytest.raises(OodsegError, match="query count") as info:
        MaskAdapter(_Queries("wrong-queries"))
    assert "\n" not in str(info.value)
    with pytest.raises(OodsegError, match="columns"):
        MaskAdapter(_Queries(columns=2), negative_class=True)
