"""RPL + CoroCL: frozen base, exact step-0 equivalence, hooks on both networks, checkpoints, CoroCL sampling."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError
from oodseg.models import build_model, load_checkpoint, save_checkpoint
from oodseg.training.losses import supervised_infonce
from oodseg.models.rpl import RPLModel
from oodseg.training.rpl import RPLRecipe, coro_contrastive_loss, sample_pixels
from oodseg.training import make_config

SMALL = {"num_classes": 5, "widths": (8, 12, 16), "aspp_channels": 8, "aspp_rates": (1, 2, 3),
         "low_channels": 4, "decoder_channels": 8}
DEEPLAB = {"num_classes": 5, "backbone": "resnet18", "aspp_channels": 16, "low_channels": 8,
           "decoder_channels": 16}


@pytest.fixture
def outlier_pool(tmp_path, rng):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        image = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[8 + i:30, 10:35 - i] = 1
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i}.png")
    return tmp_path


def _base(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, **(SMALL if arch == "small" else DEEPLAB))
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(2):
            model(torch.rand(2, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("arch", ["small", "deeplabv3plus"])
def test_zero_initialised_residual_reproduces_the_frozen_logits(arch):
    base = _base(arch)
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        reference = base(images)
        head_view = ModelAdapter(base)(images)
    model = RPLModel(base).eval()
    assert model.head_name == "classifier"
    with torch.no_grad():
        assert torch.equal(model(images), reference)
        out = model(images, training_outputs=True)
    assert torch.equal(out["vanilla"], head_view.logits)
    assert torch.equal(out["rpl"], head_view.logits)
    assert out["projection"].shape == (2, 304, *head_view.logits.shape[-2:])
    assert all(not p.requires_grad for p in model.base.parameters())
    # the RPL ASPP starts from the network's own ASPP (same rates and width)
    assert model.build_params["width"] == base.aspp.project[0].out_channels
    assert torch.equal(model.rpl.aspp.project[0].weight, base.aspp.project[0].weight)


def _train_steps(recipe, module, config, steps=3):
    optimizer = torch.optim.Adam(recipe.param_groups(module, config))
    module.train()
    terms = {}
    for step in range(steps):
        data = {"image": torch.rand(2, 3, 64, 64), "label": torch.randint(0, 5, (2, 64, 64)),
                "seed": torch.tensor([step, step + 100])}
        batch = recipe.batch(data, np.random.default_rng(step))
        loss, terms = recipe.loss(module, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return terms


@pytest.mark.parametrize("arch", ["small", "deeplabv3plus"])
def test_training_keeps_the_frozen_network_bit_identical(arch, outlier_pool):
    base = _base(arch)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    recipe = RPLRecipe(samples_per_group=64)
    config = make_config("rpl", data="unused", out="unused", outliers=str(outlier_pool), arch=arch,
                         arch_params=SMALL if arch == "small" else DEEPLAB)
    module = recipe.setup(base, config)
    rpl_before = {k: v.clone() for k, v in module.rpl.state_dict().items()}
    terms = _train_steps(recipe, module, config)
    assert set(terms) == {"ce", "entropy_mse", "energy_mse", "energy", "corocl"}
    assert all(np.isfinite(v) for v in terms.values())
    assert not module.base.training and all(not m.training for m in module.base.modules())
    after = module.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not torch.equal(rpl_before["residual_head.weight"], module.rpl.state_dict()["residual_head.weight"])
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(module.eval()(images), base(images))


def test_param_groups_give_the_heads_ten_times_the_learning_rate(outlier_pool):
    recipe = RPLRecipe()
    config = make_config("rpl", data="unused", out="unused", outliers=str(outlier_pool), lr=1e-3)
    module = recipe.setup(_base("small"), config)
    groups = recipe.param_groups(module, config)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[1] == {id(p) for p in [*module.rpl.residual_head.parameters(), *module.rpl.projector.parameters()]}
    assert ids[0] | ids[1] == {id(p) for p in module.rpl.parameters()}
    assert not ids[0] & {id(p) for p in module.base.parameters()}


def test_loss_adds_the_weighted_inlier_energy_anchor(outlier_pool):
    config = make_config("rpl", data="unused", out="unused", outliers=str(outlier_pool))
    data = {"image": torch.rand(2, 3, 64, 64), "label": torch.randint(0, 5, (2, 64, 64)), "seed": torch.tensor([1, 2])}
    totals = {}
    for weight in (0.0, 2.5):
        recipe = RPLRecipe(samples_per_group=32, inlier_energy_weight=weight)
        module = recipe.setup(_base("small"), config).eval()  # deterministic: no dropout, BN statistics fixed
        torch.manual_seed(0)
        nn.init.normal_(module.rpl.residual_head.weight, std=0.5)  # a residual that moves the logits
        batch = recipe.batch(data, np.random.default_rng(0))
        with torch.no_grad():
            totals[weight], terms = recipe.loss(module, batch)
        out = module(batch["image"], training_outputs=True)
        up = lambda x: torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
        inlier = (batch["label"] < 5).numpy()
        gap = (torch.logsumexp(up(out["rpl"][:2]), 1) - torch.logsumexp(up(out["vanilla"][:2]), 1)).detach().numpy()
        assert terms["energy_mse"] == pytest.approx(float((gap[inlier] ** 2).mean()), rel=1e-5)
        assert terms["energy_mse"] > 0
    assert float(totals[2.5] - totals[0.0]) == pytest.approx(2.5 * terms["energy_mse"], rel=1e-4)
    with pytest.raises(OodsegError, match="inlier_energy_weight"):
        RPLRecipe(inlier_energy_weight=-1)


def test_checkpoint_round_trip_rebuilds_the_rpl_model(tmp_path, outlier_pool):
    recipe = RPLRecipe()
    config = make_config("rpl", data="unused", out="unused", outliers=str(outlier_pool), arch="small",
                         arch_params=SMALL)
    module = recipe.setup(_base("small"), config)
    _train_steps(recipe, module, config, steps=1)
    model, architecture, params = recipe.export(module)
    save_checkpoint(model.eval(), tmp_path / "ckpt", architecture, params)
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["architecture"] == "rpl" and isinstance(loaded, RPLModel)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        assert torch.equal(loaded(images), expected)
        view = ModelAdapter(loaded)(images)  # the scorer's view: the base head, fed z + residual
    assert view.weight.shape == (5, 8)
    upsampled = torch.nn.functional.interpolate(view.logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(upsampled, expected, atol=1e-6)


def test_missing_hooks_fail_before_training(outlier_pool):
    with pytest.raises(OodsegError, match="feature_module 'encoder'") as info:
        RPLModel(_base("small"), feature_module="encoder")
    assert "\n" not in str(info.value)

    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.aspp = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.aspp(x)

    with pytest.raises(OodsegError, match="1×1"):
        RPLModel(NoHead())

    class LateFeatures(nn.Module):  # the named module runs after the head: nothing to attach to
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.classifier = nn.Conv2d(4, 5, 1)
            self.aspp = nn.Identity()

        def forward(self, x):
            return self.aspp(self.classifier(self.body(x)))

    with pytest.raises(OodsegError, match="did not run before the head"):
        RPLModel(LateFeatures())
    config = make_config("rpl", data="unused", out="unused")
    with pytest.raises(OodsegError, match="^outliers: the rpl recipe"):
        RPLRecipe().setup(_base("small"), config)


def test_sample_pixels_caps_each_group(rng):
    embeddings = torch.tensor(rng.normal(size=(2, 3, 10, 10)), dtype=torch.float32)
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[:, :3] = 254
    labels[0, 9] = 255
    chosen, ids = sample_pixels(embeddings, labels, (254, -1), (1, 0), 50, torch.Generator().manual_seed(0))
    assert (ids == 1).sum() == 50 and (ids == 0).sum() == 50  # 60 outlier and 130 inlier pixels available
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, 3)
    outlier_rows = {tuple(r) for r in flat[labels.reshape(-1) == 254].tolist()}
    assert all(tuple(r) in outlier_rows for r in chosen[ids == 1].tolist())
    ignored = tuple(flat[90].tolist())  # a pixel labelled 255 is in no group
    assert ignored not in {tuple(r) for r in chosen.tolist()}


def test_coro_contrastive_loss_uses_the_right_anchor_and_contrast_sets(rng):
    scene = torch.tensor(rng.normal(size=(1, 4, 3, 3)))
    context = torch.tensor(rng.normal(size=(1, 4, 3, 3)))
    scene_labels = torch.tensor([[[254, 1, 2], [255, 0, 254], [3, 3, 255]]])
    context_labels = torch.tensor([[[254, 254, 255], [255, 255, 255], [255, 254, 255]]])
    got = coro_contrastive_loss(scene, scene_labels, context, context_labels, temperature=0.1)
    s, c = scene[0].reshape(4, -1).T, context[0].reshape(4, -1).T
    sl, cl = scene_labels.reshape(-1), context_labels.reshape(-1)
    anchors = torch.cat([s[sl == 254], s[sl < 254]])
    anchor_ids = torch.tensor([1] * int((sl == 254).sum()) + [0] * int((sl < 254).sum()))
    others = torch.cat([c[cl == 254], c[cl != 254]])
    other_ids = torch.tensor([1] * int((cl == 254).sum()) + [0] * int((cl != 254).sum()))
    expected = supervised_infonce(anchors, anchor_ids, others, other_ids, 0.1)  # set order does not matter
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
