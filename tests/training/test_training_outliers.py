"""Outlier pool, pasting (254 exactly on the pasted mask) and mixing of whole outlier images."""
import numpy as np
import pytest
import torch
from PIL import Image

from oodseg.errors import OodsegError
from oodseg.training.outliers import OutlierPool, add_outliers, outlier_scene, paste_object


def _disk(height, width, cy, cx, radius):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _write_pool(root, count=3, mask_value=1, suffix=""):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).save(root / "images" / f"o{i}.png")
        mask = _disk(24, 32, 12, 10 + 3 * i, 6).astype(np.uint8) * mask_value
        Image.fromarray(mask).save(root / "masks" / f"o{i}{suffix}.png")
    return root


def test_paste_object_marks_254_exactly_where_the_mask_lands():
    image = torch.zeros(3, 40, 50)
    label = torch.full((40, 50), 3, dtype=torch.long)
    obj_mask = torch.from_numpy(_disk(30, 30, 14, 16, 9))
    obj_image = torch.ones(3, 30, 30)
    # bounding box of the disk is 19x19; size fraction 19/40 of min(40, 50) keeps it at scale 1
    paste_object(image, label, obj_image, obj_mask, np.random.default_rng(4), size_range=(19 / 40, 19 / 40))
    pasted = (label == 254).numpy()
    assert np.array_equal(pasted, (image == 1).all(0).numpy())      # label 254 <=> pasted pixel
    assert ((label == 3) | (label == 254)).all()                       # nothing else touched
    rows, cols = np.nonzero(pasted)
    y, x = rows.min(), cols.min()
    box = obj_mask.numpy()[5:24, 7:26]                                 # the disk's bounding box
    assert np.array_equal(pasted[y:y + 19, x:x + 19], box)
    assert pasted.sum() == box.sum()


def test_paste_object_rescales_and_stays_inside(rng):
    for seed in range(10):
        image = torch.zeros(3, 32, 48)
        label = torch.zeros(32, 48, dtype=torch.long)
        obj_mask = torch.from_numpy(_disk(20, 20, 10, 10, 8))
        paste_object(image, label, torch.ones(3, 20, 20), obj_mask, np.random.default_rng(seed), size_range=(0.3, 0.6))
        pasted = (label == 254).numpy()
        area_fraction = pasted.sum() / obj_mask.sum().item()
        side = np.ptp(np.nonzero(pasted)[0]) + 1
        assert 0.3 * 32 - 2 <= side <= 0.6 * 32 + 1  # disk tips may vanish when downscaled
        assert 0.05 < area_fraction < 1.5
        assert np.array_equal(pasted, (image > 0.5).all(0).numpy())


def test_outlier_scene_labels_254_on_mask_and_255_elsewhere():
    obj_mask = torch.from_numpy(_disk(30, 40, 15, 20, 10))
    obj_image = torch.where(obj_mask, torch.ones(3, 30, 40), torch.zeros(3, 30, 40))
    image, label = outlier_scene(obj_image, obj_mask, (16, 16), np.random.default_rng(0))
    assert image.shape == (3, 16, 16) and label.shape == (16, 16)
    assert set(label.unique().tolist()) == {254, 255}
    inside = (label == 254)
    assert (image[:, inside] > 0.5).all() and (image[:, ~inside] < 0.5).all()  # mask and image stay aligned
    assert inside.float().mean() == pytest.approx(obj_mask[:, 5:35].float().mean().item(), abs=0.15)


def test_pool_reads_masks_and_add_outliers_is_deterministic(tmp_path):
    pool = OutlierPool(_write_pool(tmp_path / "pool", mask_value=255))
    assert len(pool) == 3
    image, mask = pool[0]
    assert image.shape == (3, 24, 32) and mask.dtype == torch.bool and mask.sum() == _disk(24, 32, 12, 10, 6).sum()
    data = {"image": torch.rand(4, 3, 32, 32), "label": torch.randint(0, 19, (4, 32, 32)),
            "seed": torch.tensor([1, 2, 3, 4])}
    a, b = add_outliers(data, pool), add_outliers(data, pool)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert all((a["label"][i] == 254).any() for i in range(4))
    assert not (data["label"] == 254).any()                 # input untouched
    changed = (a["label"] != data["label"])
    assert torch.equal(changed, a["label"] == 254)
    # a sample's outliers depend only on its own seed (not on batch composition)
    single = add_outliers({k: v[2:3] for k, v in data.items()}, pool)
    assert torch.equal(single["label"][0], a["label"][2]) and torch.equal(single["image"][0], a["image"][2])
    mixed = add_outliers(data, pool, mode="mix", rate=1.0)
    assert all(set(mixed["label"][i].unique().tolist()) == {254, 255} for i in range(4))


def test_pool_errors_are_one_line(tmp_path):
    with pytest.raises(OodsegError, match="outlier pool folder not found"):
        OutlierPool(tmp_path / "nothing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(OodsegError, match="no frames found") as info:
        OutlierPool(tmp_path / "empty")
    assert "\n" not in str(info.value)
    root = _write_pool(tmp_path / "nomask")
    (root / "masks" / "o1.png").unlink()
    with pytest.raises(OodsegError, match="o1.png: missing label"):
        OutlierPool(root)
    root = _write_pool(tmp_path / "suffix", suffix="_mask")
    assert len(OutlierPool(root, mask_suffix="_mask")) == 3
    root = _write_pool(tmp_path / "bad", mask_value=7)
    with pytest.raises(OodsegError, match="o0.png"):
        OutlierPool(root)[0]
