"""Training transforms: crops, padding, flips and colour jitter checked against direct indexing."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oodseg.conventions import image_to_tensor
from oodseg.data.transforms import (SegmentationTrainSet, TrainAugment, check_labels, class_uniform_pixel,
                                    jitter_colours, scaled_crop)
from oodseg.errors import OodsegError


def _pair(rng, height=20, width=30):
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 19, size=(height, width), dtype=np.uint8)
    return image, label


def test_image_to_tensor_layout_and_range(rng):
    image, _ = _pair(rng)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 20, 30) and tensor.dtype == torch.float32
    assert np.allclose(tensor.permute(1, 2, 0).numpy() * 255, image)


def test_scaled_crop_at_scale_one_is_a_window_of_the_original(rng):
    image, label = _pair(rng)
    img_t, lab_t = image_to_tensor(image), torch.from_numpy(label).long()
    crop_img, crop_lab = scaled_crop(img_t, lab_t, 8, 1.0, np.random.default_rng(3))
    # find the window by brute force over all offsets
    hits = [(y, x) for y in range(20 - 7) for x in range(30 - 7) if np.array_equal(label[y:y + 8, x:x + 8], crop_lab.numpy())
            and np.allclose(image[y:y + 8, x:x + 8] / 255.0, crop_img.permute(1, 2, 0).numpy())]
    assert len(hits) == 1


def test_scaled_crop_pads_small_images_with_zero_and_ignore(rng):
    image, label = _pair(rng, 5, 6)
    crop_img, crop_lab = scaled_crop(image_to_tensor(image), torch.from_numpy(label).long(), 9, 1.0, rng)
    assert crop_img.shape == (3, 9, 9) and crop_lab.shape == (9, 9)
    assert np.array_equal(crop_lab[:5, :6].numpy(), label)
    assert (crop_lab[5:] == 255).all() and (crop_lab[:, 6:] == 255).all()
    assert (crop_img[:, 5:] == 0).all() and (crop_img[:, :, 6:] == 0).all()


def test_scaled_crop_downscale_keeps_label_values_and_block_structure():
    # 2x2 blocks of one label each; scale 0.5 over a 16-px window -> 8 px: each output pixel is one block
    label = np.kron(np.arange(64).reshape(8, 8), np.ones((2, 2), dtype=np.int64))
    image = np.repeat((label * 3).astype(np.uint8)[..., None], 3, axis=2)
    crop_img, crop_lab = scaled_crop(image_to_tensor(image), torch.from_numpy(label), 8, 0.5, np.random.default_rng(0))
    assert np.array_equal(crop_lab.numpy(), np.arange(64).reshape(8, 8))
    assert np.allclose(crop_img[0].numpy() * 255, np.arange(64).reshape(8, 8) * 3, atol=1e-3)


def test_augment_is_deterministic_per_seed_and_flips_labels_with_images(rng):
    image, label = _pair(rng)
    img_t, lab_t = image_to_tensor(image), torch.from_numpy(label).long()
    augment = TrainAugment(crop_size=12, scale_range=(0.8, 1.3), hflip=True, color_jitter=0.0)
    a = augment(img_t, lab_t, np.random.default_rng(5))
    b = augment(img_t, lab_t, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outputs = {augment(img_t, lab_t, np.random.default_rng(s))[1].numpy().tobytes() for s in range(8)}
    assert len(outputs) > 1
    # without jitter and at scale 1, the flip keeps image/label aligned: colour -> label mapping is preserved
    coded = np.repeat(label[..., None] * 10, 3, axis=2).astype(np.uint8)
    flip_only = TrainAugment(crop_size=12, scale_range=(1.0, 1.0), hflip=True, color_jitter=0.0)
    for seed in range(6):
        img, lab = flip_only(image_to_tensor(coded), lab_t, np.random.default_rng(seed))
        assert np.allclose(img[0].numpy() * 255, lab.numpy() * 10, atol=1e-3)


def test_jitter_colours_stays_in_range_and_strength_zero_is_identity(rng):
    image = torch.rand(3, 10, 10)
    assert torch.allclose(jitter_colours(image, 0.0, rng), image, atol=1e-6)
    jittered = jitter_colours(image, 0.9, rng)
    assert jittered.min() >= 0 and jittered.max() <= 1


def test_check_labels_names_file_and_values():
    check_labels(np.array([[0, 18, 255]], dtype=np.uint8), 19, "a.png")
    with pytest.raises(OodsegError, match=r"a\.png: unknown label value\(s\) 19, 254"):
        check_labels(np.array([[0, 19, 254]], dtype=np.uint8), 19, "a.png")


def test_train_set_checks_labels_and_shapes(rng):
    image, label = _pair(rng)
    bad = label.copy()
    bad[0, 0] = 77
    sample = SimpleNamespace(image=image, label=bad, image_path="x/y.png")
    dataset = SegmentationTrainSet([sample], TrainAugment(8), 19)
    with pytest.raises(OodsegError, match="y.png: unknown label value"):
        dataset[(0, 1)]
    dataset = SegmentationTrainSet([SimpleNamespace(image=image, label=label[:5], image_path="x/z.png")], TrainAugment(8), 19)
    with pytest.raises(OodsegError, match="z.png: label shape"):
        dataset[(0, 1)]
    item = SegmentationTrainSet([SimpleNamespace(image=image, label=label, image_path="x/w.png")], TrainAugment(8), 19)[(0, 7)]
    assert item["image"].shape == (3, 8, 8) and item["label"].shape == (8, 8) and item["seed"] == 7


class _CountingDataset(list):
    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


def test_train_set_cache_reads_each_frame_once_within_budget(rng):
    frames = _CountingDataset(SimpleNamespace(image=img, label=lab, image_path=f"{i}.png")
                              for i, (img, lab) in enumerate(_pair(rng) for _ in range(3)))
    one_frame_mb = (20 * 30 * 4) / 2 ** 20
    cached = SegmentationTrainSet(frames, TrainAugment(8), 19, cache_mb=2.5 * one_frame_mb)  # room for 2 frames
    for _ in range(3):
        for index in range(3):
            cached[(index, 0)]
    assert _CountingDataset.reads == 2 + 3  # frames 0, 1 once; frame 2 every time
    assert torch.equal(cached[(2, 5)]["image"], SegmentationTrainSet(frames, TrainAugment(8), 19)[(2, 5)]["image"])


def test_focused_crop_contains_the_focus_pixel_at_every_position():
    # every pixel has its own label value (row * 40 + col), so the crop shows which pixels it holds
    label = torch.arange(30 * 40).reshape(30, 40)
    image = torch.zeros(3, 30, 40)
    for focus, positions in [((0, 0), 1), ((29, 39), 1), ((15, 3), 10 * 4), ((15, 20), 10 * 10)]:
        starts = set()
        for seed in range(60):
            _, crop = scaled_crop(image, label, 10, 1.0, np.random.default_rng(seed), focus=focus)
            assert focus[0] * 40 + focus[1] in crop.numpy()
            starts.add(int(crop[0, 0]))
        # drawn among all the windows containing the focus (a corner pixel has exactly one)
        assert len(starts) == 1 if positions == 1 else len(starts) >= 20


def test_class_uniform_pixel_picks_classes_not_pixels():
    label = torch.zeros(20, 20, dtype=torch.int64)
    label[3, 7] = 5  # one pixel of class 5 among 399 of class 0
    label[10:, :] = 255  # void is never chosen
    picks = [class_uniform_pixel(label, np.random.default_rng(seed)) for seed in range(400)]
    rare = sum(p == (3, 7) for p in picks)
    # class 5 is drawn with probability 1/2: 200 ± 4.5 sigma (sigma = 10)
    assert 155 <= rare <= 245
    assert all(int(label[r, c]) != 255 for r, c in picks)
    assert class_uniform_pixel(torch.full((4, 4), 255), np.random.default_rng(0)) is None


def test_class_uniform_augment_shows_rare_classes_more_often(rng):
    label = np.zeros((64, 96), dtype=np.uint8)
    label[40:44, 80:82] = 7  # a small sign in one corner
    image = np.repeat(label[..., None] * 20, 3, axis=2)
    img_t, lab_t = image_to_tensor(image), torch.from_numpy(label).long()
    uniform = TrainAugment(16, (1.0, 1.0), hflip=False, color_jitter=0.0)
    focused = TrainAugment(16, (1.0, 1.0), hflip=False, color_jitter=0.0, class_uniform=1.0)
    seen = [sum(bool((aug(img_t, lab_t, np.random.default_rng(s))[1] == 7).any()) for s in range(200))
            for aug in (uniform, focused)]
    # uniform windows (49 x 81 positions) contain the sign in 17 * 18 of them: ~7.7 %; focused: half the
    # crops pick class 7 and always contain it, the other half pick class 0 (rarely near the sign)
    assert seen[0] <= 35 and seen[1] >= 80
