"""The baseline's head-resolution loss (head_logits, labels_at) and channels-last training."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.models import build_model, load_checkpoint, register_architecture
from oodseg.training import make_config
from oodseg.workflows.train import train
from oodseg.models.flow import squeeze, unsqueeze
from oodseg.training.baseline import BaselineRecipe
from oodseg.training.recipe import head_logits, labels_at
from training_fixtures import TINY_ARCH, write_tiny_cityscapes


@pytest.fixture
def data(tmp_path):
    return write_tiny_cityscapes(tmp_path / "data")


@pytest.mark.parametrize("size,out", [((16, 24), (4, 6)), ((13, 22), (5, 7)), ((8, 8), (8, 8)), ((6, 9), (9, 4))])
def test_labels_at_takes_the_label_under_each_cell_centre(size, out):
    labels = torch.randint(0, 256, (2, *size))
    got = labels_at(labels, out)
    height, width = size
    expected = torch.empty((2, *out), dtype=torch.long)
    for i in range(out[0]):
        for j in range(out[1]):  # the cell centre (i + 0.5, j + 0.5) in input pixels, rounded down
            expected[:, i, j] = labels[:, math.floor((i + 0.5) * height / out[0]), math.floor((j + 0.5) * width / out[1])]
    assert got.dtype == torch.long and torch.equal(got, expected)
    corners = torch.empty((2, *out), dtype=torch.long)
    for i in range(out[0]):
        for j in range(out[1]):  # "nearest" (RPL's contrastive grid): the cell's first pixel
            corners[:, i, j] = labels[:, math.floor(i * height / out[0]), math.floor(j * width / out[1])]
    assert torch.equal(labels_at(labels, out, mode="nearest"), corners)


def test_labels_at_stride_four_is_every_fourth_pixel_from_the_third():
    labels = torch.randint(0, 19, (3, 32, 48))
    assert torch.equal(labels_at(labels, (8, 12)), labels[:, 2::4, 2::4])


def test_head_logits_are_the_classifier_output_and_leave_no_hook():
    torch.manual_seed(0)
    model = build_model("small", num_classes=19).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        got = head_logits(model, model.classifier, images)
        expected = model.classifier(model.features(images))  # the network's named parts, no hook involved
    assert got.shape == (2, 19, 16, 24) and torch.allclose(got, expected, atol=1e-6)
    assert not model.classifier._forward_hooks


def test_head_logits_fail_clearly_when_the_head_does_not_run():
    model = build_model("small", num_classes=19)
    with pytest.raises(OodsegError, match="did not run"):
        head_logits(model, nn.Conv2d(4, 19, 1), torch.rand(1, 3, 32, 32))


def test_head_resolution_loss_is_weighted_ce_at_the_cell_centres():
    torch.manual_seed(1)
    model = build_model("small", num_classes=19).eval()
    recipe = BaselineRecipe(class_weight_power=0.0)
    recipe.setup(model, make_config("baseline", data="unused", out="unused"))
    recipe.class_weights = torch.rand(19) + 0.5
    images, labels = torch.rand(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    labels[0, :8] = 255
    loss, terms = recipe.loss(model, {"image": images, "label": labels})
    with torch.no_grad():  # numpy: log-softmax of the classifier output, labels at rows/cols 2, 6, 10, ...
        logits = model.classifier(model.features(images)).double().numpy()
    target = labels[:, 2::4, 2::4].numpy()
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    valid = target != 255
    b, y, x = np.nonzero(valid)
    nll = -log_p[b, target[valid], y, x]
    weights = recipe.class_weights.double().numpy()[target[valid]]
    assert math.isclose(float(loss.detach()), (weights * nll).sum() / weights.sum(), rel_tol=1e-5)
    assert math.isclose(terms["ce"], nll.mean(), rel_tol=1e-5)


def test_full_resolution_option_upsamples_the_logits_instead():
    torch.manual_seed(2)
    model = build_model("small", num_classes=19).eval()
    recipe = BaselineRecipe(class_weight_power=0.0, head_resolution=False)
    recipe.setup(model, make_config("baseline", data="unused", out="unused"))
    images, labels = torch.rand(1, 3, 32, 32), torch.randint(0, 19, (1, 32, 32))
    loss, _ = recipe.loss(model, {"image": images, "label": labels})
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels)
    assert recipe.head is None and math.isclose(float(loss.detach()), float(expected), rel_tol=1e-6)


class _NoOneByOneHead(nn.Module):
    """Logits straight from a 3×3 conv: no 1×1 classifier for head_logits to hook."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, images):
        return self.conv(images)


def test_a_network_without_a_1x1_head_gets_a_hint(data, tmp_path):
    register_architecture("no-1x1-head", _NoOneByOneHead)
    config = make_config("baseline", data=str(data), out=str(tmp_path / "a"), arch="no-1x1-head", steps=1,
                         batch_size=2, crop_size=32)
    with pytest.raises(OodsegError, match="head_resolution=false"):
        train(config)
    config = make_config("baseline", data=str(data), out=str(tmp_path / "b"), arch="no-1x1-head", steps=1,
                         batch_size=2, crop_size=32, recipe_params={"head_resolution": False})
    assert train(config)["steps"] == 1
    with pytest.raises(OodsegError, match="head_resolution must be true or false"):
        BaselineRecipe(head_resolution="yes")


def test_channels_last_trains_the_same_model_as_contiguous(data, tmp_path):
    def run(name, channels_last):
        config = make_config("baseline", data=str(data), out=str(tmp_path / name), arch_params=TINY_ARCH, steps=3,
                             batch_size=2, crop_size=32, lr=5e-3, warmup_steps=0, channels_last=channels_last)
        train(config)
        return load_checkpoint(tmp_path / name / "checkpoint")[0].state_dict()

    fast, plain = run("cl", True), run("plain", False)
    assert fast.keys() == plain.keys()
    for key in fast:  # same arithmetic up to the order of float sums
        assert torch.allclose(fast[key].float(), plain[key].float(), atol=1e-4), key
    assert all(v.is_contiguous() for v in fast.values())  # the checkpoint loads into a plain model


def test_cli_switches_channels_last_off(data, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--steps", "1",
                                       "--batch-size", "2", "--crop-size", "32", "--no-channels-last", "--json",
                                       "--arch-param", "widths=[8,12,16]", "-p", "head_resolution=false"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["steps"] == 1
    config = json.loads(torch.load(out / "trainer_state.pt", weights_only=True)["config"])
    assert config["channels_last"] is False and config["recipe_params"] == {"head_resolution": False}


def test_flow_squeeze_accepts_channels_last_tensors():
    x = torch.rand(2, 3, 8, 6)
    y = squeeze(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(y, squeeze(x)) and torch.equal(unsqueeze(y.contiguous(memory_format=torch.channels_last)), x)
