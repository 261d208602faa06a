"""Networks, registry and checkpoints of oodseg.models."""
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from oodseg.errors import OodsegError
from oodseg.models import (CITYSCAPES_CLASSES, DeepLabV3Plus, SmallSegNet, available_architectures, build_model,
                           load_checkpoint, read_checkpoint_meta, register_architecture, save_checkpoint)
from oodseg.models.registry import _ARCHITECTURES
from oodseg.models.resnet import ResNetBackbone


def _aspp_input_size(model, images):
    seen = {}
    handle = model.aspp.register_forward_pre_hook(lambda m, args: seen.update(high=args[0].shape))
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    return seen["high"], logits


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_output_stride_sets_feature_resolution(output_stride):
    model = DeepLabV3Plus(num_classes=5, backbone="resnet18", output_stride=output_stride).eval()
    images = torch.rand(2, 3, 64, 96)
    high, logits = _aspp_input_size(model, images)
    assert tuple(high) == (2, 512, 64 // output_stride, 96 // output_stride)
    assert logits.shape == (2, 5, 64, 96)
    with torch.no_grad():
        assert model.features(images).shape == (2, 256, 16, 24)  # classifier runs at stride 4


def test_output_stride_changes_dilation_not_weights():
    os8, os16 = ResNetBackbone("resnet18", 8), ResNetBackbone("resnet18", 16)
    assert {k: v.shape for k, v in os8.state_dict().items()} == {k: v.shape for k, v in os16.state_dict().items()}
    assert os8.layer4[0].conv1.dilation == (4, 4) and os8.layer3[0].conv1.dilation == (2, 2)
    assert os16.layer4[0].conv1.dilation == (2, 2) and os16.layer3[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("name, expected", [("resnet18", 11_176_512), ("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_resnet_parameter_counts_match_published_resnets(name, expected):
    # Published ImageNet ResNet parameter counts minus the 1000-way fc layer (D*1000 + 1000).
    assert sum(p.numel() for p in ResNetBackbone(name).parameters()) == expected


def test_small_model_size_shape_and_named_parts():
    model = build_model("small", num_classes=7).eval()
    assert 0.3e6 <= sum(p.numel() for p in model.parameters()) <= 1.5e6
    for part in ("backbone", "aspp", "decoder", "classifier"):
        assert hasattr(model, part)
    assert isinstance(model.decoder.dropout, torch.nn.Dropout2d)
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 7
    high, logits = _aspp_input_size(model, torch.rand(1, 3, 64, 128))
    assert tuple(high[-2:]) == (4, 8) and logits.shape == (1, 7, 64, 128)
    small = SmallSegNet(num_classes=3, widths=[8, 16, 32], decoder_channels=16)
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("convs,expected", [(None, [1, 2, 2, 2]), (3, [3, 3, 3, 3]), ([2, 1, 1, 3], [2, 1, 1, 3])])
def test_small_model_convs_per_stage(convs, expected):
    model = SmallSegNet(convs_per_stage=convs)
    counts = [sum(isinstance(m, torch.nn.Conv2d) for m in stage.modules()) for stage in model.backbone.stages]
    strides = [stage[0][0].stride for stage in model.backbone.stages]
    assert counts == expected and strides == [(2, 2)] * 4
    for bad in ([1, 2, 2], [0, 2, 2, 2], 0):
        with pytest.raises(ValueError, match="convs_per_stage"):
            SmallSegNet(convs_per_stage=bad)


def test_models_normalise_with_imagenet_statistics(rng):
    model = build_model("small")
    images = rng.random((2, 3, 5, 4), dtype=np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    np.testing.assert_allclose(model.normalize(torch.from_numpy(images)).numpy(), (images - mean) / std, rtol=1e-6)
    assert "normalize.mean" not in model.state_dict()


def test_registry_names_errors_and_lazy_modules(tmp_path, monkeypatch):
    assert {"small", "deeplabv3plus", "rpl"} <= set(available_architectures())
    with pytest.raises(OodsegError, match="unknown"):
        build_model("no-such-net")
    with pytest.raises(OodsegError, match="bad parameters"):
        build_model("small", widths=[8])
    with pytest.raises(OodsegError, match="bad parameters"):
        build_model("small", no_such_param=1)
    (tmp_path / "mynets.py").write_text(
        "from oodseg.models import register_architecture, SmallSegNet\n"
        "def tiny(**kw):\n    return SmallSegNet(widths=(4, 8, 8), **kw)\n"
        "register_architecture('selfreg', tiny)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_ARCHITECTURES, "selfreg", "mynets")
    monkeypatch.setitem(_ARCHITECTURES, "attr", "mynets:tiny")
    monkeypatch.setitem(_ARCHITECTURES, "silent", "json")
    assert build_model("selfreg", num_classes=4).classifier.out_channels == 4
    assert build_model("attr", num_classes=3).classifier.out_channels == 3
    with pytest.raises(OodsegError, match="did not register"):
        build_model("silent")
    register_architecture("direct", lambda num_classes=2: torch.nn.Conv2d(3, num_classes, 1))
    try:
        assert build_model("direct", num_classes=6).out_channels == 6
    finally:
        _ARCHITECTURES.pop("direct")
    sys.modules.pop("mynets", None)


def _tiny(num_classes=4):
    params = {"num_classes": num_classes, "widths": (4, 8, 8), "aspp_channels": 8, "low_channels": 4,
              "decoder_channels": 8}
    model = build_model("small", **params)
    with torch.no_grad():  # non-trivial BN statistics so the round trip is meaningful
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model, params


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    model, params = _tiny()
    save_checkpoint(model, tmp_path / "ckpt", "small", params, ["a", "b", "c", "d"], recipe="baseline", steps=3)
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    original = model.state_dict()
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(stored) == set(original)
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    assert meta["format"] == "oodseg.checkpoint" and meta["version"] == 1
    assert meta["architecture"] == "small" and meta["num_classes"] == 4 and meta["classes"] == ["a", "b", "c", "d"]
    assert meta["params"]["widths"] == [4, 8, 8] and meta["recipe"] == "baseline" and meta["steps"] == 3
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model.eval()(images))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]


def test_checkpoint_default_class_names(tmp_path):
    model, params = _tiny(num_classes=19)
    save_checkpoint(model, tmp_path / "c", "small", params)
    assert read_checkpoint_meta(tmp_path / "c")["classes"] == list(CITYSCAPES_CLASSES)
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_checkpoint_mismatched_requests_are_refused(tmp_path):
    model, params = _tiny(num_classes=19)
    save_checkpoint(model, tmp_path / "c", "small", params)
    with pytest.raises(OodsegError, match="has 19 classes, expected 10"):
        load_checkpoint(tmp_path / "c", num_classes=10)
    with pytest.raises(OodsegError, match="architecture is 'small', expected 'deeplabv3plus'"):
        load_checkpoint(tmp_path / "c", architecture="deeplabv3plus")
    with pytest.raises(OodsegError, match="4 class names for a 19-class model"):
        save_checkpoint(model, tmp_path / "d", "small", params, ["a", "b", "c", "d"])
    with pytest.raises(OodsegError, match="num_classes=3 but the model has 19"):
        save_checkpoint(model, tmp_path / "d", "small", {**params, "num_classes": 3})
    with pytest.raises(OodsegError, match="reserved"):
        save_checkpoint(model, tmp_path / "d", "small", params, None, format="x")


def _edit_meta(directory, **changes):
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_checkpoint_bad_files_give_one_line_errors(tmp_path):
    model, params = _tiny()
    ckpt = tmp_path / "c"
    save_checkpoint(model, ckpt, "small", params)
    with pytest.raises(OodsegError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")

    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(OodsegError, match="checksum") as info:
        load_checkpoint(ckpt)
    assert "\n" not in str(info.value)
    _edit_meta(ckpt, weights_sha256=None)  # a model.json without the checksum is refused (issue 18)
    with pytest.raises(OodsegError, match="weights_sha256") as info:
        load_checkpoint(ckpt)
    assert "\n" not in str(info.value)
    _edit_meta(ckpt, weights_sha256="0" * 63)
    with pytest.raises(OodsegError, match="weights_sha256"):
        load_checkpoint(ckpt)
    _edit_meta(ckpt, weights_sha256="0" * 64)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(OodsegError, match="model.safetensors: missing"):
        load_checkpoint(ckpt)

    save_checkpoint(model, ckpt, "small", params)
    _edit_meta(ckpt, params={**params, "decoder_channels": 16})
    with pytest.raises(OodsegError, match="shape mismatches"):
        load_checkpoint(ckpt)
    _edit_meta(ckpt, params={**params, "convs_per_stage": 3})
    with pytest.raises(OodsegError, match="missing keys"):
        load_checkpoint(ckpt)
    _edit_meta(ckpt, architecture="nonexistent")
    with pytest.raises(OodsegError, match="unknown"):
        load_checkpoint(ckpt)
    _edit_meta(ckpt, version=7)
    with pytest.raises(OodsegError, match="unsupported checkpoint version"):
        load_checkpoint(ckpt)
    (ckpt / "model.json").write_text("{not json")
    with pytest.raises(OodsegError, match="corrupt JSON"):
        load_checkpoint(ckpt)
    (ckpt / "model.json").unlink()
    with pytest.raises(OodsegError, match="model.json: missing"):
        load_checkpoint(ckpt)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    model, params = _tiny()
    ckpt = tmp_path / "c"
    save_checkpoint(model, ckpt, "small", params)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(OodsegError, match="not JSON-serialisable"):
        save_checkpoint(model, ckpt, "small", params, note=object())
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
