"""ModelAdapter: head discovery, captured tensors, block capture, gradients and hook hygiene."""
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oodseg.adapter import ModelAdapter, SegOutput
from oodseg.conventions import model_logits
from oodseg.errors import OodsegError
from oodseg.models import DeepLabV3Plus, SmallSegNet

from model_fixtures import randomise_batchnorm


class AuxAfterHead(nn.Module):
    """Head 'cls' is registered before an auxiliary 1×1 conv 'aux' with the same class count,
    and 'aux' even runs after 'cls'; the network returns a dict."""

    def __init__(self, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.cls = nn.Conv2d(8, classes, 1)
        self.aux = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        z = self.down(self.body(x))
        logits = self.cls(z)
        aux = self.aux(z)
        return {"aux": aux, "out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class NoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _models():
    return {
        "deeplab-r18": DeepLabV3Plus(num_classes=6, backbone="resnet18", output_stride=16),
        "small": SmallSegNet(num_classes=6, widths=(8, 16, 24), aspp_channels=16, low_channels=8, decoder_channels=16),
        "aux-after-head": AuxAfterHead(classes=6),
    }


@pytest.mark.parametrize("name", ["deeplab-r18", "small", "aux-after-head"])
def test_captured_head_reproduces_logits(name, rng):
    model = randomise_batchnorm(_models()[name]).eval()
    expected_head = "cls" if name == "aux-after-head" else "classifier"
    images = torch.from_numpy(rng.random((2, 3, 48, 64), dtype=np.float32))
    with ModelAdapter(model) as adapter, torch.no_grad():
        out = adapter(images)
        assert adapter.head_name == expected_head and adapter.head is dict(model.named_modules())[expected_head]
        assert adapter.num_classes == 6 and adapter.model is model
        full = model_logits(model(images))
    assert isinstance(out, SegOutput) and out.image_size == (48, 64)
    # independent: numpy W z + b against the captured logits
    z, w, b = out.features.numpy(), out.weight.detach().numpy(), out.bias.detach().numpy()
    assert w.shape == (6, z.shape[1])
    np.testing.assert_allclose(np.einsum("cd,bdhw->bchw", w, z) + b[None, :, None, None], out.logits.numpy(),
                               rtol=1e-5, atol=1e-5)
    # the network's own output is the bilinear upsampling of the captured logits
    torch.testing.assert_close(out.upsampled_logits(), full)


@pytest.mark.parametrize("name", ["deeplab-r18", "small"])
def test_block_capture_reproduces_block_output(name, rng):
    model = randomise_batchnorm(_models()[name]).eval()
    images = torch.from_numpy(rng.random((1, 3, 32, 48), dtype=np.float32))
    with ModelAdapter(model, capture_block=True) as adapter, torch.no_grad():
        out = adapter(images)
    block = out.block
    assert adapter.has_block and block is not None
    last = model.decoder.fuse[-1]
    conv, bn = last[0], last[1]
    assert block.conv_weight is conv.weight and block.stride == (1, 1) and block.padding == (1, 1)
    # independent re-computation: conv with the reported geometry, eval-mode BN written out by hand
    conv_out = F.conv2d(block.input, block.conv_weight, None, block.stride, block.padding, block.dilation)
    mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    expected_pre = (conv_out - mean) / torch.sqrt(var + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(block.pre_relu[0], expected_pre[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.bn_scale, bn.weight / torch.sqrt(bn.running_var + bn.eps))
    torch.testing.assert_close(torch.relu(block.pre_relu), out.features)  # Dropout2d is the identity in eval
    with ModelAdapter(model) as plain, torch.no_grad():
        assert plain(images).block is None  # only on request


def test_block_is_not_claimed_without_conv_bn_relu():
    with ModelAdapter(AuxAfterHead(), capture_block=True) as adapter:
        assert not adapter.has_block and adapter(torch.rand(1, 3, 16, 16)).block is None


def test_head_by_name_and_errors():
    model = AuxAfterHead()
    with ModelAdapter(model, head="cls") as adapter:
        assert adapter.head is model.cls
    with pytest.raises(OodsegError, match="'aux': its output does not reproduce the logits of AuxAfterHead"):
        ModelAdapter(model, head="aux")  # same shape as the logits, but not the model's classifier
    with pytest.raises(OodsegError, match="'down': is a Conv2d.*not a 1×1"):
        ModelAdapter(model, head="down")
    with pytest.raises(OodsegError, match="no module of that name"):
        ModelAdapter(model, head="nope")
    with ModelAdapter(NoHead()) as adapter:  # no 1×1 classifier: the output itself is the logits
        assert adapter.logits_only and adapter.head is None and adapter.head_name is None
    with pytest.raises(OodsegError, match="expected a torch.nn.Module"):
        ModelAdapter(lambda x: x)
    with pytest.raises(OodsegError, match=r"probe forward pass on a \(2, 2\) image failed.*probe_size"):
        ModelAdapter(nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 2, 1)), probe_size=(2, 2))


def test_bad_images_are_rejected():
    with ModelAdapter(AuxAfterHead()) as adapter:
        with pytest.raises(OodsegError, match=r"images: expected shape \(B, 3, H, W\)"):
            adapter(torch.rand(3, 16, 16))
        with pytest.raises(OodsegError, match="NaN or Inf"):
            adapter(torch.full((1, 3, 8, 8), float("nan")))
        with pytest.raises(OodsegError, match="dtype"):
            adapter(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))


def test_gradients_flow_to_the_input_like_a_plain_forward(rng):
    model = randomise_batchnorm(_models()["small"]).eval()
    x = torch.from_numpy(rng.random((1, 3, 32, 32), dtype=np.float32))
    through_adapter = x.clone().requires_grad_(True)
    with ModelAdapter(model) as adapter:
        out = adapter(through_adapter)
        out.logits.max(dim=1).values.sum().backward()
    direct = x.clone().requires_grad_(True)
    model.classifier(model.features(direct)).max(dim=1).values.sum().backward()
    assert through_adapter.grad.abs().sum() > 0
    torch.testing.assert_close(through_adapter.grad, direct.grad)


def test_close_removes_hooks_and_nothing_is_kept_between_calls():
    model = _models()["small"].eval()
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    adapter = ModelAdapter(model, capture_block=True)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before + 3
    with torch.no_grad():
        out = adapter(torch.rand(1, 3, 32, 32))
    assert adapter._captured == {}
    ref = weakref.ref(out.features)
    del out
    gc.collect()
    assert ref() is None  # the adapter holds no reference to the last call's tensors
    adapter.close()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    with pytest.raises(OodsegError, match="closed"):
        adapter(torch.rand(1, 3, 32, 32))


def test_calls_run_in_eval_mode_and_only_stochastic_modules_train():
    model = _models()["small"].train()
    adapter = ModelAdapter(model)
    assert model.training  # the probe pass does not change the mode
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, b = adapter(x).logits, adapter(x).logits
        expected = model.eval()(x)
    model.train()
    assert torch.equal(a, b)  # a train-mode model is scored in eval mode (dropout off) ...
    torch.testing.assert_close(adapter(x).upsampled_logits().detach(), expected)
    assert all(m.training for m in model.modules())  # ... and keeps its own mode
    with adapter.stochastic([model.decoder.dropout]), torch.no_grad():
        a, b = adapter(x).logits, adapter(x).logits
    assert not torch.equal(a, b)
    adapter.close()


def test_tuple_outputs_are_understood():
    class TupleNet(AuxAfterHead):
        def forward(self, x):
            out = super().forward(x)
            return out["out"], out["aux"]

    with ModelAdapter(TupleNet()) as adapter:
        assert adapter.head_name == "cls"
    with pytest.raises(OodsegError, match="model output"):
        model_logits("text")


def test_adapter_keeps_each_modules_own_train_mode():
    """Building the adapter runs a probe pass in eval mode, then restores every module's own mode."""
    model = SmallSegNet(num_classes=5)
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
    for m in dropouts:
        m.train()  # mixed modes, as mc_dropout sets them
    ModelAdapter(model)
    assert not model.training
    assert all(m.training for m in dropouts)
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


class AlignedWithOodHead(nn.Module):
    """Upsamples its logits with ``align_corners=True`` and declares a second 1×1 head ``ood`` (2 channels)."""

    align_corners = True
    extra_heads = {"ood_logits": "ood"}

    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(8, classes, 1)
        self.ood = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        z = self.body(x)
        size = x.shape[-2:]
        return {"logits": F.interpolate(self.cls(z), size=size, mode="bilinear", align_corners=True),
                "ood_logits": F.interpolate(self.ood(z), size=size, mode="bilinear", align_corners=True)}


def test_align_corners_of_the_model_is_honoured_when_upsampling():
    model = AlignedWithOodHead().eval()
    images = torch.rand(2, 3, 13, 18)
    with ModelAdapter(model, probe_size=(13, 18)) as adapter, torch.no_grad():
        out = adapter(images)
        output = model(images)
    assert adapter.head_name == "cls" and adapter.align_corners and out.align_corners
    score = out.logits[:, 0] * 3.0 - out.logits[:, 1]
    expected = F.interpolate(score[:, None], size=(13, 18), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(out.upsample(score), expected, rtol=0, atol=0)
    torch.testing.assert_close(out.upsampled_logits(), output["logits"], rtol=0, atol=0)
    # the extra head is captured at the head's resolution and is what the model upsampled
    assert list(out.extras) == ["ood_logits"] and out.extras["ood_logits"].shape == (2, 2, 7, 9)
    torch.testing.assert_close(F.interpolate(out.extras["ood_logits"], size=(13, 18), mode="bilinear",
                                             align_corners=True), output["ood_logits"], rtol=0, atol=0)


def test_models_without_the_attribute_keep_align_corners_false():
    model = SmallSegNet(num_classes=6, widths=(8, 16, 24), aspp_channels=16, low_channels=8,
                        decoder_channels=16).eval()
    images = torch.rand(1, 3, 32, 48)
    with ModelAdapter(model, probe_size=(32, 48)) as adapter, torch.no_grad():
        out = adapter(images)
        output = model(images)
    assert not adapter.align_corners and not out.align_corners and out.extras == {}
    score = out.logits[:, 2]
    expected = F.interpolate(score[:, None], size=(32, 48), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.upsample(score), expected, rtol=0, atol=0)
    torch.testing.assert_close(out.upsampled_logits(), output, rtol=0, atol=0)


def test_score_runner_upsamples_with_the_models_align_corners():
    from oodseg import scores
    from oodseg.workflows.score import _score_batch

    model = AlignedWithOodHead().eval()
    images = torch.rand(1, 3, 13, 18)
    with ModelAdapter(model, probe_size=(13, 18)) as adapter:
        maps, prediction = _score_batch(adapter, [scores.get("energy")], images)
        with torch.no_grad():
            out = adapter(images)
    energy = -torch.logsumexp(out.logits, dim=1)
    expected = F.interpolate(energy[:, None], size=(13, 18), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(maps["energy"], expected)
    assert torch.equal(prediction, model(images)["logits"].argmax(1).to(torch.uint8))


def test_extra_head_must_name_a_module():
    model = AlignedWithOodHead()
    model.extra_heads = {"ood_logits": "missing"}
    with pytest.raises(OodsegError, match="extra head 'ood_logits' names 'missing'"):
        ModelAdapter(model, probe_size=(13, 18))
