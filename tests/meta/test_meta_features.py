"""Segment features against an independent per-segment Python loop (brute force) on small random maps."""
import numpy as np
import pytest
from skimage.measure import label as sk_label

from oodseg.errors import OodsegError
from oodseg.meta.features import dispersion_maps, metaood_feature_names, segment_features
from oodseg.meta.segments import class_segments, interior_mask, threshold_segments

OFFSETS = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]


def brute_force_features(ids, maps, probs, prediction):
    """Per-segment loop over pixel lists: {segment id: {feature name: value}}."""
    H, W = ids.shape
    out = {}
    for k in range(1, ids.max() + 1):
        pixels = [(h, w) for h in range(H) for w in range(W) if ids[h, w] == k]
        inner, ring = [], set()
        for h, w in pixels:
            is_inner = True
            for dh, dw in OFFSETS:
                y, x = h + dh, w + dw
                if not (0 <= y < H and 0 <= x < W):
                    is_inner = False
                    continue
                if ids[y, x] != k:
                    is_inner = False
                    ring.add((y, x))
            inner.append(is_inner)
        inner = np.array(inner)
        S, S_in = len(pixels), int(inner.sum())
        S_bd = S - S_in
        f = {"S": S, "S_in": S_in, "S_bd": S_bd, "S_rel": S / S_bd, "S_rel_in": S_in / S_bd}
        for name, m in maps.items():
            v = np.array([m[h, w] for h, w in pixels], dtype=np.float64)
            vin, vbd = v[inner], v[~inner]
            f[f"{name}_mean"] = v.mean()
            f[f"{name}_in"] = vin.mean() if S_in else 0.0
            f[f"{name}_bd"] = vbd.mean()
            f[f"{name}_var"] = v.var()
            f[f"{name}_var_in"] = vin.var() if S_in else 0.0
            f[f"{name}_var_bd"] = vbd.var()
            f[f"{name}_rel"] = f[f"{name}_mean"] * f["S_rel"]
            f[f"{name}_rel_in"] = f[f"{name}_in"] * f["S_rel_in"]
            f[f"{name}_var_rel"] = f[f"{name}_var"] * f["S_rel"]
            f[f"{name}_var_rel_in"] = f[f"{name}_var_in"] * f["S_rel_in"]
        if probs is not None:
            for c in range(probs.shape[0]):
                f[f"cprob{c}"] = np.mean([float(probs[c, h, w]) for h, w in pixels])
                f[f"ndist{c}"] = sum(prediction[y, x] == c for y, x in ring) / max(len(ring), 1)
        f["mean_x"] = np.mean([h for h, _ in pixels])
        f["mean_y"] = np.mean([w for _, w in pixels])
        out[k] = f
    return out


def random_probs(rng, C, H, W, smooth=True):
    logits = rng.normal(size=(C, H, W)) * 3
    if smooth:  # blobs so that segments of several sizes occur
        logits += np.repeat(np.repeat(rng.normal(size=(C, H // 4 + 1, W // 4 + 1)) * 4, 4, 1), 4, 2)[:, :H, :W]
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def assert_matches(result, reference):
    assert list(result.segment_ids) == sorted(reference)
    for row, k in zip(result.values, result.segment_ids):
        for name, value in zip(result.names, row):
            assert value == pytest.approx(reference[k][name], rel=1e-9, abs=1e-9), (k, name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_segment_features_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    C, H, W = 4, 13, 17
    probs = random_probs(rng, C, H, W)
    prediction = probs.argmax(0)
    ids, n, cls = class_segments(prediction)
    maps = dispersion_maps(probs)
    maps["score"] = rng.normal(size=(H, W)).astype(np.float32)
    result = segment_features(ids, n, maps, probs, prediction)
    reference = brute_force_features(ids, maps, probs, prediction)
    sizes = result.values[:, 0]
    assert (sizes == 1).any() and (sizes > 8).any()  # one-pixel and larger segments occur
    assert_matches(result, reference)
    # every segment is one connected piece of one predicted class
    for k, c in zip(range(1, n + 1), cls):
        assert (prediction[ids == k] == c).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_threshold_segment_features_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    C, H, W = 5, 16, 20
    probs = random_probs(rng, C, H, W)
    maps = dispersion_maps(probs)
    valid = rng.random((H, W)) > 0.1
    ids, n = threshold_segments(maps["E"], 0.5, valid)
    reference_ids = sk_label((maps["E"] >= 0.5) & valid, connectivity=2)
    assert n == reference_ids.max()
    assert np.array_equal(ids > 0, reference_ids > 0)
    # same partition (ids may be numbered differently)
    pairs = set(zip(ids[ids > 0].tolist(), reference_ids[ids > 0].tolist()))
    assert len(pairs) == n
    result = segment_features(ids, n, maps, probs)
    assert_matches(result, brute_force_features(ids, maps, probs, probs.argmax(0)))


def test_border_one_pixel_and_no_interior_segments():
    ids = np.zeros((6, 7), dtype=np.int32)
    ids[0:3, 0:3] = 1            # 3x3 block in the corner: its one interior pixel is (1, 1)
    ids[5, 6] = 2                # one pixel in the opposite corner
    ids[2:5, 5] = 3              # a vertical line: no interior
    ids[3:6, 0:6][ids[3:6, 0:6] == 0] = 4  # an L-shaped block along the bottom border
    interior = interior_mask(ids)
    # hand-counted: (1,1) of segment 1; (4,1), (4,2), (4,3) of segment 4 ((4,4) touches segment 3)
    assert sorted(zip(*np.nonzero(interior))) == [(1, 1), (4, 1), (4, 2), (4, 3)]
    m = np.arange(42, dtype=np.float64).reshape(6, 7)
    probs = np.stack([m / 41, 1 - m / 41])
    result = segment_features(ids, 4, {"M": m}, probs)
    reference = brute_force_features(ids, {"M": m}, probs, probs.argmax(0))
    assert_matches(result, reference)
    row = dict(zip(result.names, result.values[2]))
    assert row["S_in"] == 0 and row["M_in"] == 0 and row["M_var_in"] == 0 and row["M_rel_in"] == 0
    row = dict(zip(result.names, result.values[1]))
    assert row["S"] == 1 and row["S_bd"] == 1 and row["M_var"] == 0
    # hand-computed ring of the corner pixel (5,6): (4,5), (4,6), (5,5) — three pixels
    cls = probs.argmax(0)
    assert row["ndist0"] == pytest.approx(np.mean([cls[4, 5] == 0, cls[4, 6] == 0, cls[5, 5] == 0]))


def test_full_metaood_set_has_75_named_features():
    names = metaood_feature_names(19)
    assert len(names) == 75 == len(set(names))  # SPEC: 75 (the paper's "83" is not what its code computes)
    assert names[:5] == ["S", "S_in", "S_bd", "S_rel", "S_rel_in"]
    for m in ("E", "D", "V"):
        for stat in ("mean", "in", "bd", "var", "var_in", "var_bd", "rel", "rel_in", "var_rel", "var_rel_in"):
            assert f"{m}_{stat}" in names
    assert [f"cprob{c}" for c in range(19)] == names[35:54]
    assert [f"ndist{c}" for c in range(19)] == names[54:73]
    assert names[-2:] == ["mean_x", "mean_y"]
    rng = np.random.default_rng(0)
    probs = random_probs(rng, 19, 12, 16)
    ids, n, _ = class_segments(probs.argmax(0))
    result = segment_features(ids, n, dispersion_maps(probs), probs)
    assert result.names == names and result.values.shape == (n, 75)


def test_dispersion_maps_match_numpy(rng):
    probs = random_probs(rng, 6, 5, 7)
    maps = dispersion_maps(probs)
    s = np.sort(probs, axis=0)
    entropy = -(probs * np.log(probs)).sum(0) / np.log(6)
    np.testing.assert_allclose(maps["E"], entropy, atol=1e-5)
    np.testing.assert_allclose(maps["V"], 1 - s[-1], atol=1e-6)
    np.testing.assert_allclose(maps["D"], 1 - s[-1] + s[-2], atol=1e-6)


def test_no_segments_and_bad_input():
    ids = np.zeros((4, 5), dtype=np.int32)
    result = segment_features(ids, 0, {"E": np.zeros((4, 5))}, np.full((3, 4, 5), 1 / 3))
    assert result.values.shape == (0, 5 + 10 + 3 + 3 + 2)
    with pytest.raises(OodsegError, match="E: shape"):
        segment_features(ids, 0, {"E": np.zeros((4, 6))})
    with pytest.raises(OodsegError, match="probs: shape"):
        segment_features(ids, 0, None, np.zeros((3, 5, 4)))
    with pytest.raises(OodsegError, match="NaN"):
        segment_features(ids, 0, {"E": np.full((4, 5), np.nan)})
