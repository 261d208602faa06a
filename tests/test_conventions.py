"""oodseg.conventions: the one logits rule (training and scoring read the same tensor), resizing, frame → tensor."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oodseg.adapter import ModelAdapter
from oodseg.conventions import image_to_tensor, model_logits, resize_logits, resize_map
from oodseg.errors import OodsegError
from oodseg.training.recipe import segmentation_logits


class AuxFirst(nn.Module):
    """Two 1×1 heads with the same class count; the dict lists the auxiliary head first."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.aux_head = nn.Conv2d(8, classes, 1)
        self.main_head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        z = self.body(x)
        return {"aux": self.aux_head(z), "logits": self.main_head(z)}


def test_aux_and_logits_train_and_score_the_same_tensor(rng):
    """The latent bug of issue 17: the adapter took the dict's first value ("aux") while training took
    "logits". Both now read "logits"; the reference is the model's own dict entry."""
    model = AuxFirst().eval()
    images = torch.from_numpy(rng.random((2, 3, 20, 28), dtype=np.float32))
    with torch.no_grad():
        raw = model(images)
        trained_on = segmentation_logits(model, images)
        with ModelAdapter(model) as adapter:
            scored_on = adapter(images)
    assert adapter.head_name == "main_head"
    torch.testing.assert_close(scored_on.logits, raw["logits"])
    assert not torch.allclose(scored_on.logits, raw["aux"])
    reference = F.interpolate(raw["logits"], size=(20, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(trained_on, reference)
    torch.testing.assert_close(scored_on.upsampled_logits(), trained_on)


def test_logits_rule_by_output_type():
    a, b = torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)
    assert model_logits(a) is a
    assert model_logits({"aux": a, "logits": b}) is b
    assert model_logits({"aux": a, "out": b}) is b          # torchvision's key
    assert model_logits({"out": a, "logits": b}) is b       # "logits" wins over "out"
    assert model_logits({"only": a}) is a
    assert model_logits((b, a)) is b and model_logits([{"logits": a}]) is a
    with pytest.raises(OodsegError, match="model output: .*'aux', 'main'"):
        model_logits({"aux": a, "main": b})
    with pytest.raises(OodsegError, match="model output"):
        model_logits("text")


def test_resizing_is_bilinear_half_pixel_and_identity_at_size(rng):
    score = torch.from_numpy(rng.random((2, 3, 4), dtype=np.float32))
    assert resize_map(score, (3, 4)).data_ptr() == score.data_ptr()
    up = resize_map(score, (6, 8))
    # align_corners=False at scale 2: output pixel (1, 1) sits at input (0.25, 0.25) → clamped corner mix
    y, x = 0.25, 0.25
    s = score[0].numpy()
    expected = (1 - y) * (1 - x) * s[0, 0] + (1 - y) * x * s[0, 1] + y * (1 - x) * s[1, 0] + y * x * s[1, 1]
    assert up.shape == (2, 6, 8) and up[0, 1, 1].item() == pytest.approx(expected, rel=1e-6)
    logits = torch.from_numpy(rng.random((1, 5, 3, 4), dtype=np.float32))
    torch.testing.assert_close(resize_logits(logits, (6, 8))[:, 2], resize_map(logits[:, 2], (6, 8)))


def test_image_to_tensor_layout_and_scale():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    tensor = image_to_tensor(frame)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 2, 3)
    assert tensor[1, 1, 2].item() == pytest.approx(frame[1, 2, 1] / 255.0)
