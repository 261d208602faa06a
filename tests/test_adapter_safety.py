"""Adapter safety (issue 15): a head must reproduce the model's logits, auxiliary heads are told apart by
the output, models without a 1×1 classifier are scored in logits-only mode, and scoring never changes
a model's parameters, buffers or train/eval modes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oodseg import scores
from oodseg.adapter import HEAD_TOLERANCE, ModelAdapter
from oodseg.errors import OodsegError
from oodseg.scores.sampling import DROPOUT_TYPES

from model_fixtures import randomise_batchnorm
from training_fixtures import write_tiny_cityscapes


class LRASPPLike(nn.Module):
    """torchvision's LRASPP layout: the logits are the SUM of a classifier on low-level features and a
    classifier on the gated high-level features, so neither 1×1 classifier alone reproduces them."""

    def __init__(self, classes=4):
        super().__init__()
        self.low = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.high = nn.Sequential(nn.Conv2d(6, 12, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.ModuleDict({
            "cbr": nn.Sequential(nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
            "scale": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 8, 1, bias=False), nn.Sigmoid()),
            "low_classifier": nn.Conv2d(6, classes, 1),
            "high_classifier": nn.Conv2d(8, classes, 1),
        })

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        c = self.classifier
        gated = F.interpolate(c["cbr"](high) * c["scale"](high), size=low.shape[-2:], mode="bilinear",
                              align_corners=False)
        out = c["low_classifier"](low) + c["high_classifier"](gated)
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class UnetLike(nn.Module):
    """Encoder-decoder whose segmentation head is a 3×3 conv (smp's Unet): no 1×1 classifier at all."""

    def __init__(self, classes=5, dropout=0.3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout))
        self.segmentation_head = nn.Conv2d(8, classes, 3, padding=1)

    def forward(self, x):
        y = F.interpolate(self.decoder(self.encoder(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.segmentation_head(y)


class CornersNet(nn.Module):
    """A 1×1 head at stride 4, upsampled with ``align_corners=True`` (smp, DPT), declared nowhere, and an
    auxiliary 1×1 head with the same class count that runs after it (DPT's / UperNet's auxiliary head)."""

    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)
        self.auxiliary = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        z = self.body(x)
        return {"logits": F.interpolate(self.head(z), size=x.shape[-2:], mode="bilinear", align_corners=True),
                "auxiliary_logits": self.auxiliary(z)}


class FullNet(nn.Module):
    """Everything every registered score reads: BN with running statistics, dropout with p > 0, a
    conv → BN → ReLU block feeding a 1×1 head, and a declared 2-way extra head (DenseHybrid's)."""

    extra_heads = {"ood_logits": "ood"}

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Dropout2d(0.3))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Conv2d(8, classes, 1)
        self.ood = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        z = self.block(self.stem(x))
        size = x.shape[-2:]
        return {"logits": F.interpolate(self.classifier(z), size=size, mode="bilinear", align_corners=False),
                "ood_logits": F.interpolate(self.ood(z), size=size, mode="bilinear", align_corners=False)}


def _images(rng, batch=2, size=(32, 32)):
    return torch.from_numpy(rng.random((batch, 3, *size), dtype=np.float32))


def _relative_gap(a, b):
    return float((a - b).abs().max() / b.abs().max())


# --- which 1×1 conv is the head --------------------------------------------------------------------

def test_a_named_head_that_does_not_reproduce_the_logits_is_refused(rng):
    model = randomise_batchnorm(LRASPPLike()).eval()
    images = _images(rng)
    with torch.no_grad():
        reference = model(images)["out"]
        # independent check that the premise holds: the high classifier alone, resized, is far from the output
        parts = {}
        hook = model.classifier["high_classifier"].register_forward_hook(lambda m, i, o: parts.setdefault("h", o))
        model(images)
        hook.remove()
    partial = F.interpolate(parts["h"], size=reference.shape[-2:], mode="bilinear", align_corners=False)
    assert _relative_gap(partial, reference) > 100 * HEAD_TOLERANCE
    for head in ("classifier.high_classifier", "classifier.low_classifier"):
        with pytest.raises(OodsegError, match=rf"^head '{head}': its output does not reproduce the logits of "
                                              r"LRASPPLike \(relative difference [0-9.e+-]+ after bilinear"):
            ModelAdapter(model, head=head)
    # without a head name the summed output is scored as it is: logits-only
    with ModelAdapter(model) as adapter, torch.no_grad():
        assert adapter.logits_only and adapter.num_classes == 4
        assert torch.equal(adapter(images).logits, reference)


def test_the_head_that_reproduces_the_output_wins_and_gives_align_corners(rng):
    model = CornersNet().eval()
    images = _images(rng, size=(30, 42))
    with ModelAdapter(model) as adapter, torch.no_grad():
        out = adapter(images)
        reference = model(images)["logits"]
    assert adapter.head_name == "head" and adapter.align_corners is True and out.align_corners is True
    # independent: the model's own output is the align_corners=True resize of the captured head logits ...
    torch.testing.assert_close(F.interpolate(out.logits, size=(30, 42), mode="bilinear", align_corners=True),
                               reference)
    torch.testing.assert_close(out.upsampled_logits(), reference)
    # ... and the align_corners=False resize (the old assumption) is not
    assert _relative_gap(F.interpolate(out.logits, size=(30, 42), mode="bilinear"), reference) > HEAD_TOLERANCE
    with pytest.raises(OodsegError, match="'auxiliary': its output does not reproduce"):
        ModelAdapter(model, head="auxiliary")
    model.align_corners = False  # a declared convention is the only one tried
    with pytest.raises(OodsegError, match=r"'head': .*resizing with align_corners=False"):
        ModelAdapter(model, head="head")


def test_dpt_from_transformers_picks_its_main_head_over_the_auxiliary_one(rng):
    from transformers import DPTConfig, DPTForSemanticSegmentation

    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                       fusion_hidden_size=16, use_auxiliary_head=True, num_labels=5)
    model = randomise_batchnorm(DPTForSemanticSegmentation(config)).eval()
    images = _images(rng, batch=1, size=(64, 64))  # DPT takes square images only
    with ModelAdapter(model, probe_size=(64, 64)) as adapter, torch.no_grad():
        out = adapter(images)
        reference = model(pixel_values=images).logits
    assert adapter.head_name == "head.head.4" and adapter.align_corners is True
    torch.testing.assert_close(out.upsampled_logits(reference.shape[-2:]), reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(OodsegError, match="'auxiliary_head.head.4': its output does not reproduce"):
        ModelAdapter(model, head="auxiliary_head.head.4", probe_size=(64, 64))


def test_upernet_from_transformers_picks_its_decode_head_over_the_auxiliary_one(rng):
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8,
                                                         num_labels=5, use_auxiliary_head=True))
    model = randomise_batchnorm(model).eval()
    images = _images(rng, batch=1, size=(64, 96))
    with ModelAdapter(model, probe_size=(64, 64)) as adapter, torch.no_grad():
        out = adapter(images)
        reference = model(pixel_values=images).logits
    assert adapter.head_name == "decode_head.classifier" and adapter.align_corners is False
    torch.testing.assert_close(out.upsampled_logits(), reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(OodsegError, match="'auxiliary_head.classifier': its output does not reproduce"):
        ModelAdapter(model, head="auxiliary_head.classifier", probe_size=(64, 64))


# --- parameters, buffers and modes are never changed ---------------------------------------------

def _every_scorer(model, second):
    """Every registered score but those of mask-classification models (tests/mask/test_mask_workflow.py)."""
    built = []
    for name in scores.available():
        if "masks" in scores.REGISTRY[name].needs:
            continue
        if name == "ensemble":
            built.append(scores.get(name, models=[model, second]))
        elif name == "mc_dropout":
            built.append(scores.get(name, samples=2, seed=0))
        else:
            built.append(scores.get(name))
    built.append(scores.get("pgn", layer="second_to_last"))
    return built


def test_scoring_with_every_score_leaves_parameters_buffers_and_modes_untouched(rng):
    model, second = randomise_batchnorm(FullNet()), randomise_batchnorm(FullNet())
    model.train()
    model.stem[1].eval()  # a mixed state the user chose: it must come back as it was
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(rng)
    adapter = ModelAdapter(model, capture_block=True)
    names = []
    for scorer in _every_scorer(model, second):
        if scorer.runs_model:
            result = scorer(adapter, images)
        else:
            if scorer.needs_fit:
                scorer.fit([adapter(images)])
            result = scorer(adapter(images))
        assert torch.isfinite(result).all(), scorer.key
        names.append(scorer.name)
    adapter.close()
    assert set(names) == {n for n in scores.available() if "masks" not in scores.REGISTRY[n].needs}
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed  # BN running statistics and num_batches_tracked included
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_a_train_mode_model_gives_its_eval_mode_output(rng):
    model = randomise_batchnorm(UnetLike())
    images = _images(rng)
    with torch.no_grad():
        expected = model.eval()(images)
    model.train()
    with ModelAdapter(model) as adapter, torch.no_grad():
        first, second = adapter(images).logits, adapter(images).logits
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert model.training


# --- logits-only mode ------------------------------------------------------------------------------

def test_logits_only_scores_equal_the_same_scores_of_the_model_output(rng):
    model, member = randomise_batchnorm(UnetLike()).eval(), randomise_batchnorm(UnetLike()).eval()
    images = _images(rng)
    with torch.no_grad():
        logits = model(images).double().numpy()
        member_logits = member(images).double().numpy()
    adapter = ModelAdapter(model)
    assert adapter.logits_only and adapter.head is None and adapter.num_classes == 5
    with torch.no_grad():
        out = adapter(images)
    assert out.features is None and out.weight is None and out.image_size == (32, 32)
    maps = scores.compute(["msp", "entropy", "max_logit", "energy", "margin"], out)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p = softmax(logits)
    top = np.sort(p, axis=1)
    expected = {"msp": 1 - p.max(axis=1), "entropy": -(p * np.log(p)).sum(axis=1) / np.log(5),
                "max_logit": -logits.max(axis=1),
                "energy": -(logits.max(axis=1) + np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1))),
                "margin": 1 - top[:, -1] + top[:, -2]}
    for name, value in expected.items():
        np.testing.assert_allclose(maps[name].numpy(), value, rtol=1e-5, atol=1e-5, err_msg=name)
    # model-running scores work too: the ensemble is the normalised entropy of the members' mean softmax
    mean = (softmax(logits) + softmax(member_logits)) / 2
    ensemble = scores.get("ensemble", models=[adapter, member])(adapter, images)
    np.testing.assert_allclose(ensemble.numpy(), -(mean * np.log(mean)).sum(axis=1) / np.log(5), rtol=1e-5, atol=1e-6)
    for name in ("mc_dropout", "odin"):
        assert torch.isfinite(scores.get(name)(adapter, images)).all()
    # feature scores say why they cannot run
    for name in ("feature_norm", "n_max_logit", "n_energy_cw", "pgn"):
        with pytest.raises(OodsegError, match=rf"^{name}: needs the input features of a 1×1 classifier head, and "
                                              r"this SegOutput has none .*\(logits-only mode\)"):
            scores.get(name)(out)
    with pytest.raises(OodsegError, match="SegOutput.features: missing"):
        scores.get("mahalanobis").fit([out])
    adapter.close()


def test_logits_only_can_be_asked_for(rng):
    model = FullNet().eval()
    with ModelAdapter(model, logits_only=True) as adapter, torch.no_grad():
        images = _images(rng)
        assert adapter.logits_only
        assert torch.equal(adapter(images).logits, model(images)["logits"])
    with pytest.raises(OodsegError, match="cannot be combined with logits_only"):
        ModelAdapter(model, head="classifier", logits_only=True)


def test_score_workflow_refuses_feature_scores_of_a_logits_only_model_before_writing(tmp_path):
    from oodseg.models import register_architecture, save_checkpoint
    from oodseg.workflows.score import score_dataset

    register_architecture("test-unet-like", lambda num_classes=19: UnetLike(classes=num_classes))
    root = write_tiny_cityscapes(tmp_path / "data", n_train=1, n_val=2, outliers=False)
    save_checkpoint(UnetLike(classes=19).eval(), tmp_path / "ckpt", "test-unet-like", {"num_classes": 19})
    out = tmp_path / "scores"
    with pytest.raises(OodsegError, match=r"^feature_norm, pgn: need the input features of a 1×1 classifier head, "
                                          r"and the model of .*ckpt has none"):
        score_dataset(tmp_path / "ckpt", root / "cityscapes", ["entropy", "feature_norm", "pgn"], out)
    assert not out.exists()
    summary = score_dataset(tmp_path / "ckpt", root / "cityscapes", ["entropy", "odin"], out)
    assert summary["complete"] and summary["written"] == 2


# --- sampling and fitted scores on degenerate models --------------------------------------------

def test_mc_dropout_through_the_adapter_samples_with_dropout_only(rng):
    model = UnetLike(dropout=0.5)
    assert [type(m) for m in model.modules() if isinstance(m, DROPOUT_TYPES)] == [nn.Dropout2d]
    images = _images(rng)
    with ModelAdapter(model) as adapter:
        a = scores.get("mc_dropout", samples=3, seed=1)(adapter, images)
        b = scores.get("mc_dropout", samples=3, seed=2)(adapter, images)
        plain = scores.get("entropy")(adapter(images))
    assert not torch.allclose(a, b) and not torch.allclose(a, plain)  # the dropout masks were live


def test_mahalanobis_on_all_zero_features_is_a_one_line_error(rng):
    from oodseg.adapter import SegOutput

    logits = torch.from_numpy(rng.normal(size=(2, 3, 5, 6)).astype(np.float32))
    out = SegOutput(logits=logits, features=torch.zeros(2, 4, 5, 6), weight=torch.ones(3, 4), bias=torch.zeros(3))
    with pytest.raises(OodsegError, match=r"^mahalanobis: the fitted features have zero covariance \(60 pixels"):
        scores.get("mahalanobis").fit([out])
    with pytest.raises(OodsegError, match="zero covariance"):
        scores.get("mahalanobis").load_state_dict({"means": torch.zeros(3, 4), "covariance": torch.zeros(4, 4),
                                                   "count": torch.ones(3)})
    # SML on the logits of such a head (all equal to the bias) stays finite: its std is floored
    flat = SegOutput(logits=torch.zeros(2, 3, 5, 6), features=torch.zeros(2, 4, 5, 6), weight=torch.ones(3, 4))
    sml = scores.get("sml").fit([flat])
    assert torch.isfinite(sml(flat)).all()
