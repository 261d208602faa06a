"""Readers for every layout of SPEC §5 on tiny trees written here."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodseg.data import available_kinds, detect_kind, open_dataset
from oodseg.errors import OodsegError

H, W = 6, 8


def _img(path: Path, rng, fmt=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt, **({"lossless": True} if path.suffix == ".webp" else {}))
    return np.asarray(Image.open(path).convert("RGB"))


def _lbl(path: Path, arr) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _values(rng, values) -> np.ndarray:
    return rng.choice(np.asarray(values, dtype=np.uint8), size=(H, W))


def test_kinds_listed():
    assert set(available_kinds()) == {"smiyc-anomaly", "smiyc-obstacle", "lostandfound", "fishyscapes-laf",
                                      "fishyscapes-static", "road-anomaly", "streethazards", "cityscapes",
                                      "folder", "images"}


@pytest.mark.parametrize("parent", [False, True])
def test_smiyc_anomaly(tmp_path, rng, parent):
    base = tmp_path / "dataset_AnomalyTrack" if parent else tmp_path / "anomaly"
    images, labels = {}, {}
    for fid, ext in [("b", "jpg"), ("a", "png"), ("c", "webp")]:
        images[fid] = _img(base / "images" / f"{fid}.{ext}", rng)
        labels[fid] = _lbl(base / "labels_masks" / f"{fid}_labels_semantic.png", _values(rng, [0, 1, 255]))
    root = tmp_path if parent else base
    assert detect_kind(root) == "smiyc-anomaly"
    ds = open_dataset("smiyc-anomaly", root)
    assert ds.fids == ["a", "b", "c"] and len(ds) == 3 and ds.kind == "smiyc-anomaly"
    assert ds.label_type == "ood"
    for sample in ds:
        assert sample.image.dtype == np.uint8 and sample.image.shape == (H, W, 3)
        np.testing.assert_array_equal(sample.image, images[sample.fid])
        np.testing.assert_array_equal(sample.label, labels[sample.fid])
        assert sample.label.dtype == np.uint8
    assert ds["b"].fid == "b"


def test_smiyc_obstacle_and_label_options(tmp_path, rng):
    root = tmp_path / "dataset_ObstacleTrack"
    _img(root / "images" / "x_1.webp", rng)
    _img(root / "images" / "x_2.webp", rng)
    lab = _lbl(root / "labels_masks" / "x_1_labels_semantic.png", _values(rng, [0, 1, 255]))
    assert detect_kind(root) == "smiyc-obstacle"
    with pytest.raises(OodsegError, match=r"x_2_labels_semantic\.png: missing label for image .*x_2\.webp"):
        open_dataset("smiyc-obstacle", root)
    ds = open_dataset("smiyc-obstacle", root, labels="available")
    assert ds.fids == ["x_1"]
    np.testing.assert_array_equal(ds[0].label, lab)
    ds = open_dataset("smiyc-obstacle", root, labels="none")
    assert ds.fids == ["x_1", "x_2"] and ds[1].label is None and ds.label_type is None


def test_smiyc_semantic_target_reads_train_ids_with_outliers(tmp_path, rng):
    _img(tmp_path / "images" / "a.jpg", rng)
    ood = _lbl(tmp_path / "labels_masks" / "a_labels_semantic.png", _values(rng, [0, 1, 255]))
    sem = _lbl(tmp_path / "labels_masks" / "a_labels_trainIds.png", _values(rng, list(range(19)) + [254, 255]))
    ds = open_dataset("smiyc-anomaly", tmp_path, target="semantic")
    assert ds.label_type == "semantic" and ds.name == tmp_path.name
    np.testing.assert_array_equal(ds[0].label, sem)
    np.testing.assert_array_equal(open_dataset("smiyc-anomaly", tmp_path, target="ood")[0].label, ood)
    with pytest.raises(OodsegError, match="target: 'labels' is not one of ood, semantic"):
        open_dataset("smiyc-anomaly", tmp_path, target="labels")
    _lbl(tmp_path / "labels_masks" / "a_labels_trainIds.png", np.full((H, W), 19))
    with pytest.raises(OodsegError, match=r"a_labels_trainIds\.png: label value 19 is not in the trainIds with outliers"):
        open_dataset("smiyc-anomaly", tmp_path, target="semantic")[0]
    (tmp_path / "labels_masks" / "a_labels_trainIds.png").unlink()   # public SMIYC: no semantic labels
    assert open_dataset("smiyc-anomaly", tmp_path, target="semantic").label_type is None


def test_smiyc_test_set_without_labels_opens_image_only(tmp_path, rng):
    _img(tmp_path / "images" / "a.jpg", rng)
    (tmp_path / "labels_masks").mkdir()
    ds = open_dataset("smiyc-anomaly", tmp_path)
    assert ds[0].label is None


def test_unknown_label_value_names_file_and_value(tmp_path, rng):
    _img(tmp_path / "images" / "a.jpg", rng)
    bad = np.zeros((H, W), np.uint8)
    bad[2, 3] = 7
    _lbl(tmp_path / "labels_masks" / "a_labels_semantic.png", bad)
    ds = open_dataset("smiyc-anomaly", tmp_path)
    with pytest.raises(OodsegError, match=r"a_labels_semantic\.png: label value 7 is not in the 0/1/255 encoding"):
        ds[0]


def test_corrupt_image_and_empty_dataset(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels_masks").mkdir()
    with pytest.raises(OodsegError, match="no frames found"):
        open_dataset("smiyc-anomaly", tmp_path)
    (tmp_path / "images" / "a.jpg").write_bytes(b"not a jpeg")
    _lbl(tmp_path / "labels_masks" / "a_labels_semantic.png", np.zeros((H, W)))
    ds = open_dataset("smiyc-anomaly", tmp_path)
    with pytest.raises(OodsegError) as err:
        ds[0]
    assert "a.jpg: unreadable image" in str(err.value) and "\n" not in str(err.value)


def test_colour_label_and_size_mismatch(tmp_path, rng):
    _img(tmp_path / "images" / "a.png", rng)
    _img(tmp_path / "labels_masks" / "a_labels_semantic.png", rng)  # RGB label
    with pytest.raises(OodsegError, match="single-channel"):
        open_dataset("smiyc-anomaly", tmp_path)[0]
    _lbl(tmp_path / "labels_masks" / "a_labels_semantic.png", np.zeros((H + 1, W)))
    with pytest.raises(OodsegError, match="differs from image size"):
        open_dataset("smiyc-anomaly", tmp_path)[0]


def test_bad_options(tmp_path, rng):
    _img(tmp_path / "images" / "a.png", rng)
    with pytest.raises(OodsegError, match="option 'split' is not known for kind smiyc-anomaly"):
        open_dataset("smiyc-anomaly", tmp_path, split="x")
    with pytest.raises(OodsegError, match="unknown 'nope'"):
        open_dataset("nope", tmp_path)
    with pytest.raises(OodsegError, match="not a folder"):
        open_dataset("images", tmp_path / "missing")


def _laf_tree(root, rng):
    """Three sequences; one children sequence, one bicycle sequence, one unlabelled frame."""
    fids = ["02_Hanns_Klemm_Str_44_000000_000080", "02_Hanns_Klemm_Str_44_000000_000110",
            "15_Rechbergstr_Deckenpfronn_000000_000010", "01_Hanns_Klemm_Str_45_000006_000040",
            "01_Hanns_Klemm_Str_45_000005_000040"]
    raws = {}
    for i, fid in enumerate(fids):
        scene = fid[: fid.index("_0000")]
        _img(root / "leftImg8bit" / "test" / scene / f"{fid}_leftImg8bit.png", rng)
        raw = np.zeros((H, W), np.uint8) if i == 1 else _values(rng, [0, 1, 2, 37, 200, 201, 255])
        raws[fid] = _lbl(root / "gtCoarse" / "test" / scene / f"{fid}_gtCoarse_labelIds.png", raw)
    return fids, raws


def test_lostandfound_mapping_and_test_no_known(tmp_path, rng):
    fids, raws = _laf_tree(tmp_path, rng)
    assert detect_kind(tmp_path) == "lostandfound"
    ds = open_dataset("lostandfound", tmp_path)
    assert ds.fids == sorted(fids) and ds.name == f"{tmp_path.name}-test"
    for sample in ds:
        raw = raws[sample.fid]
        expected = np.full((H, W), 255, np.uint8)   # SPEC: 1 -> 0, 2..200 -> 1, else 255
        for (y, x), v in np.ndenumerate(raw):
            expected[y, x] = 0 if v == 1 else 1 if 2 <= v <= 200 else 255
        np.testing.assert_array_equal(sample.label, expected)
    no_known = open_dataset("lostandfound", tmp_path, split="testNoKnown")
    # children sequence, bicycle sequence 000006 and the unlabelled frame are dropped
    assert no_known.fids == ["01_Hanns_Klemm_Str_45_000005_000040", "02_Hanns_Klemm_Str_44_000000_000080"]
    with pytest.raises(OodsegError, match="not a LostAndFound split"):
        open_dataset("lostandfound", tmp_path, split="val")


def test_fishyscapes_laf_official_and_spec_names(tmp_path, rng):
    laf = tmp_path / "laf"
    fids, _ = _laf_tree(laf, rng)
    fs = tmp_path / "fs_laf"
    lab_a = _lbl(fs / f"0000_{fids[0]}_labels.png", _values(rng, [0, 1, 255]))
    lab_b = _lbl(fs / f"{fids[3]}_fishy-labels.png", _values(rng, [0, 1, 255]))
    assert detect_kind(fs) == "fishyscapes-laf"
    with pytest.raises(OodsegError, match="laf_root"):
        open_dataset("fishyscapes-laf", fs)
    ds = open_dataset("fishyscapes-laf", fs, laf_root=laf)
    assert ds.fids == sorted([fids[0], fids[3]])
    np.testing.assert_array_equal(ds[fids[0]].label, lab_a)
    np.testing.assert_array_equal(ds[fids[3]].label, lab_b)
    assert ds[fids[0]].image_path.name == f"{fids[0]}_leftImg8bit.png"


def test_fishyscapes_static_overlay(tmp_path, rng):
    cs = tmp_path / "cityscapes"
    base = _img(cs / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png", rng)
    fs = tmp_path / "fs_static"
    label = _lbl(fs / "0003_frankfurt_000000_000294_labels.png", _values(rng, [0, 1, 255]))
    overlay = rng.integers(-300, 300, (H, W, 3))
    fs.mkdir(exist_ok=True)
    np.savez(fs / "0003_frankfurt_000000_000294_rgb.npz", rgb=overlay)
    assert detect_kind(fs) == "fishyscapes-static"
    ds = open_dataset("fishyscapes-static", fs, cityscapes_root=cs)
    assert ds.fids == ["0003_frankfurt_000000_000294"]
    sample = ds[0]
    expected = np.array([[[min(255, max(0, int(base[y, x, c]) + int(overlay[y, x, c]))) for c in range(3)]
                          for x in range(W)] for y in range(H)], dtype=np.uint8)
    np.testing.assert_array_equal(sample.image, expected)
    np.testing.assert_array_equal(sample.label, label)


def test_fishyscapes_preprocessed_copy(tmp_path, rng):
    _img(tmp_path / "original" / "7.png", rng)
    lab = _lbl(tmp_path / "labels" / "7.png", _values(rng, [0, 1, 255]))
    for kind in ("fishyscapes-static", "fishyscapes-laf"):
        np.testing.assert_array_equal(open_dataset(kind, tmp_path)[0].label, lab)


def test_road_anomaly_original_layout(tmp_path, rng):
    _img(tmp_path / "frames" / "animals01.jpg", rng)
    raw = _lbl(tmp_path / "frames" / "animals01.labels" / "labels_semantic.png", _values(rng, [0, 2]))
    assert detect_kind(tmp_path) == "road-anomaly"
    ds = open_dataset("road-anomaly", tmp_path)
    assert ds.fids == ["animals01"]
    np.testing.assert_array_equal(ds[0].label, (raw == 2).astype(np.uint8))
    raw[0, 0] = 1    # value 1 is not used by the original encoding
    _lbl(tmp_path / "frames" / "animals01.labels" / "labels_semantic.png", raw)
    with pytest.raises(OodsegError, match="labels_semantic.png: label value 1 is not in the RoadAnomaly"):
        ds[0]


def test_road_anomaly_preprocessed_layout(tmp_path, rng):
    _img(tmp_path / "original" / "img_001.jpg", rng)
    raw = _lbl(tmp_path / "labels" / "img_001.png", _values(rng, [0, 1]))
    assert detect_kind(tmp_path) == "road-anomaly"
    np.testing.assert_array_equal(open_dataset("road-anomaly", tmp_path)[0].label, raw)
    raw[1, 1] = 2
    _lbl(tmp_path / "labels" / "img_001.png", raw)
    with pytest.raises(OodsegError, match="label value 2"):
        open_dataset("road-anomaly", tmp_path)[0]


def test_streethazards_minus_one_mapping(tmp_path, rng):
    rel = Path("test") / "t5" / "300.png"
    _img(tmp_path / "test" / "images" / rel, rng)
    raw = _lbl(tmp_path / "test" / "annotations" / rel, _values(rng, list(range(1, 15))))
    assert detect_kind(tmp_path) == "streethazards"
    ds = open_dataset("streethazards", tmp_path)
    assert ds.fids == ["test_t5_300"]
    cls = raw.astype(int) - 1                  # StreetHazards: class = value - 1, anomaly = class 13
    np.testing.assert_array_equal(ds[0].label, np.where(cls == 13, 1, 0))
    semantic = open_dataset("streethazards", tmp_path, target="semantic")
    assert semantic.label_type == "semantic"
    np.testing.assert_array_equal(semantic[0].label, np.where(cls == 13, 254, cls))
    raw[0, 0] = 15
    _lbl(tmp_path / "test" / "annotations" / rel, raw)
    with pytest.raises(OodsegError, match="label value 15"):
        ds[0]
    raw[0, 0] = 0                                 # unlabelled pixels are void in both views
    _lbl(tmp_path / "test" / "annotations" / rel, raw)
    assert ds[0].label[0, 0] == 255 and semantic[0].label[0, 0] == 255


# Official Cityscapes table (cityscapesScripts labels.py), typed independently of oodseg:
# (name, id, trainId)
CITYSCAPES_TABLE = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]


def test_cityscapes_label_ids_and_train_ids(tmp_path, rng):
    ids = np.arange(34, dtype=np.uint8)
    raw = np.concatenate([ids, rng.choice(ids, H * W - 34)]).reshape(H, W)
    _img(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png", rng)
    _lbl(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png", raw)
    train = _values(rng, list(range(19)) + [255])
    _img(tmp_path / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png", rng)
    _lbl(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", train)
    assert detect_kind(tmp_path) == "cityscapes"
    ds = open_dataset("cityscapes", tmp_path)
    assert ds.label_type == "semantic" and ds.name == f"{tmp_path.name}-val"
    lookup = {i: t for _, i, t in CITYSCAPES_TABLE}
    np.testing.assert_array_equal(ds["lindau_000001_000019"].label, np.vectorize(lookup.get)(raw))
    np.testing.assert_array_equal(ds["aachen_000000_000019"].label, train)
    with pytest.raises(OodsegError, match="Cityscapes images of split 'train'"):
        open_dataset("cityscapes", tmp_path, split="train")
    one_city = open_dataset("cityscapes", tmp_path, city="lindau")
    assert one_city.fids == ["lindau_000001_000019"] and one_city.name == f"{tmp_path.name}-val-lindau"
    assert open_dataset("cityscapes", tmp_path, city="aachen,lindau").fids == ds.fids
    with pytest.raises(OodsegError, match="city 'bonn' of split 'val'"):
        open_dataset("cityscapes", tmp_path, city="bonn")
    train[0, 0] = 19
    _lbl(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", train)
    with pytest.raises(OodsegError, match="label value 19 is not in the Cityscapes trainIds"):
        ds["aachen_000000_000019"]


def test_folder_with_mapping(tmp_path, rng):
    _img(tmp_path / "images" / "o1.png", rng)
    raw = _lbl(tmp_path / "masks" / "o1.png", _values(rng, [0, 5, 9]))
    assert detect_kind(tmp_path) == "folder"
    ds = open_dataset("folder", tmp_path, mapping="0:0,5:1,9:255")
    np.testing.assert_array_equal(ds[0].label, np.select([raw == 0, raw == 5], [0, 1], 255))
    assert ds.label_type == "ood"
    ds = open_dataset("folder", tmp_path, mapping={0: 0, 5: 1, 9: 1})
    np.testing.assert_array_equal(ds[0].label, (raw != 0).astype(np.uint8))
    with pytest.raises(OodsegError, match="label value 9"):
        open_dataset("folder", tmp_path, mapping="0:0,5:1")[0]
    with pytest.raises(OodsegError, match="cannot parse"):
        open_dataset("folder", tmp_path, mapping="0=0")


def test_images_only(tmp_path, rng):
    a = _img(tmp_path / "x" / "a.png", rng)
    _img(tmp_path / "b.jpg", rng)
    assert detect_kind(tmp_path) == "images"
    ds = open_dataset("images", tmp_path)
    assert ds.fids == ["b", "x_a"] and ds.label_type is None
    np.testing.assert_array_equal(ds["x_a"].image, a)
    assert ds["x_a"].label is None


def test_detect_kind_refuses_unknown(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OodsegError, match="cannot tell the dataset layout"):
        detect_kind(tmp_path)
