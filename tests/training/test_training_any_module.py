"""Training recipes on any segmentation ``nn.Module`` (issue 15): a hand-written network whose head is not
its last module and a tiny transformers SegFormer (random init, no download), started with
``train(config, initial=(module, architecture, params))``; the checkpoints reload."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oodseg.conventions import model_logits
from oodseg.errors import OodsegError
from oodseg.models import load_checkpoint, register_architecture
from oodseg.models.rpl import RPLModel
from oodseg.training import make_config
from oodseg.workflows.train import train

from training_fixtures import write_tiny_cityscapes

CLASSES = 19


class HandNet(nn.Module):
    """No oodseg conventions: a dict output, the 1×1 head followed by further modules (an auxiliary head
    and a refinement that is not used), logits at stride 2 upsampled with ``align_corners=True``."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.context = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(16 + 8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.cls_head = nn.Conv2d(12, num_classes, 1)
        self.aux_head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        low = self.backbone[:3](x)
        high = self.context(self.backbone[3:](low))
        up = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        logits = self.cls_head(self.fuse(torch.cat([up, low], dim=1)))
        return {"logits": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True),
                "aux": self.aux_head(high)}


SEGFORMER = dict(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                 patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                 decoder_hidden_size=16)


def tiny_segformer(num_labels: int = CLASSES) -> nn.Module:
    """A 2-stage SegFormer from transformers' own code (random init)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    return SegformerForSemanticSegmentation(SegformerConfig(**SEGFORMER, num_labels=num_labels))


MODELS = {"hand": ("test-any-hand", HandNet, "context"),
          "segformer": ("test-any-segformer", tiny_segformer, "decode_head.linear_projections.1")}
#: per recipe: options for a run of two tiny steps
RECIPES = {"entropy-max": {}, "nflowjs": {"flow_levels": 2, "flow_steps_per_level": 1, "flow_hidden": 8},
           "rpl": {"width": 8, "rates": [1, 2, 3], "projection_dim": 8, "samples_per_group": 16}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_cityscapes(tmp_path_factory.mktemp("any-module"), n_train=4, n_val=1)


def _config(data, out, recipe, **options):
    return make_config(recipe, data=str(data), out=str(out), steps=2, batch_size=2, crop_size=32, num_classes=CLASSES,
                       log_every=1, validate=False, recipe_params=options)


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("kind", list(MODELS))
def test_each_recipe_trains_any_module_and_the_checkpoint_reloads(data, tmp_path, kind, recipe):
    architecture, factory, feature_module = MODELS[kind]
    register_architecture(architecture, factory)
    torch.manual_seed(0)
    model = factory()
    options = dict(RECIPES[recipe])
    if recipe == "rpl":
        options["feature_module"] = feature_module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = train(_config(data, tmp_path / "run", recipe, **options), initial=(model, architecture, {}),
                    checkpoint_meta={"source": f"test:{kind}"})
    assert summary["steps"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    trained = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], trained[k])]
    if recipe == "rpl":
        assert not changed  # the base network is frozen
    else:
        assert changed  # the network itself was fine-tuned
    reloaded, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["source"] == f"test:{kind}" and meta["recipe"] == recipe and meta["num_classes"] == CLASSES
    images = torch.rand(1, 3, 32, 32)
    exported = model
    if recipe == "rpl":
        assert isinstance(reloaded, RPLModel) and meta["params"]["base_architecture"] == architecture
        exported = _trained_rpl(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(model_logits(reloaded(images)), model_logits(exported.eval()(images)))


def _trained_rpl(run):
    """The RPL module as trained (rebuilt from the trainer state, an independent path from model.safetensors)."""
    from oodseg.models import build_model

    meta = json.loads((run / "checkpoint" / "model.json").read_text())
    model = build_model("rpl", **meta["params"])
    state = torch.load(run / "trainer_state.pt", map_location="cpu", weights_only=True)["module"]
    model.load_state_dict(state)
    return model


def test_rpl_on_a_module_without_the_default_feature_module_lists_candidates(data, tmp_path):
    model = HandNet()
    with pytest.raises(OodsegError, match=r"^feature_module 'aspp': no module of that name in HandNet \(.*coarsest "
                                          r"4-D features before the head: backbone.4, backbone.5, context, context.0, "
                                          r"context.1\)$"):
        train(_config(data, tmp_path / "a", "rpl"), initial=(model, "test-any-hand", {}))
    assert not (tmp_path / "a").exists()


def test_rpl_needs_a_1x1_head_and_says_so(tmp_path):
    class ThreeByThree(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, CLASSES, 3, padding=1)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    with pytest.raises(OodsegError, match=r"^model ThreeByThree: RPL adds its residual to the input of the 1×1 "):
        RPLModel(ThreeByThree(), feature_module="body")


def test_an_initial_model_with_another_class_count_or_with_init_is_refused(data, tmp_path):
    with pytest.raises(OodsegError, match=r"^initial model: HandNet outputs 5 classes, the data has 19"):
        train(_config(data, tmp_path / "a", "entropy-max"), initial=(HandNet(5), "test-any-hand", {}))
    config = make_config("entropy-max", data=str(data), out=str(tmp_path / "b"), init=str(tmp_path / "ckpt"))
    with pytest.raises(OodsegError, match="given together with an initial model"):
        train(config, initial=(HandNet(), "test-any-hand", {}))
