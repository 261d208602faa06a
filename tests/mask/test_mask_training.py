"""Set-prediction and RbA losses against numpy/brute-force references; the mask-baseline and rba recipes on
the trainer (loss decreases, exact resume, frozen parts, one-line errors)."""
import json
from itertools import permutations

import numpy as np
import pytest
import torch

from oodseg.errors import OodsegError
from oodseg.mask_adapter import MaskAdapter
from oodseg.models import build_model, load_checkpoint
from oodseg.training import make_config
from oodseg.training.mask_losses import hungarian_match, match_costs, rba_outlier_loss, set_prediction_loss
from oodseg.training.recipe import get_recipe
from oodseg.workflows.train import STATE_FILE, set_batchnorm_mode, train
from training_fixtures import write_tiny_cityscapes

TINY = {"widths": [8, 12, 16], "hidden": 16, "queries": 6, "heads": 2, "feedforward": 16, "decoder_layers": 2}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_match_costs_equal_a_numpy_loop_and_hungarian_equals_brute_force(rng):
    classes = torch.from_numpy(rng.normal(size=(4, 4))).float()
    masks = torch.from_numpy(rng.normal(size=(4, 5, 6)) * 2).float()
    target_classes = torch.tensor([0, 2, 1])
    targets = torch.from_numpy(rng.random((3, 5, 6)) > 0.5).float()
    valid = torch.from_numpy(rng.random((5, 6)) > 0.2)
    costs = match_costs(classes, masks, target_classes, targets, valid).numpy()
    v = valid.numpy()
    for q in range(4):
        p = np.exp(classes[q].numpy()) / np.exp(classes[q].numpy()).sum()
        m = masks[q].numpy()[v].astype(np.float64)
        for t in range(3):
            y = targets[t].numpy()[v]
            bce = np.mean(-(y * np.log(_sigmoid(m)) + (1 - y) * np.log(1 - _sigmoid(m))))
            dice = 1 - (2 * (_sigmoid(m) * y).sum() + 1) / (_sigmoid(m).sum() + y.sum() + 1)
            assert costs[q, t] == pytest.approx(-2 * p[target_classes[t]] + 5 * bce + 5 * dice, rel=1e-4)
    rows, cols = hungarian_match(torch.from_numpy(costs))
    best = min(sum(costs[p[t], t] for t in range(3)) for p in permutations(range(4), 3))
    assert costs[rows.numpy(), cols.numpy()].sum() == pytest.approx(best)


def test_set_prediction_loss_on_a_perfect_prediction_is_small_and_gradient_steps_decrease_it(rng):
    labels = torch.zeros(1, 8, 8, dtype=torch.int64)
    labels[0, 4:] = 2
    labels[0, 0, 0] = 255
    perfect_classes = torch.full((1, 3, 4), -20.0)
    perfect_classes[0, 0, 0] = perfect_classes[0, 1, 2] = perfect_classes[0, 2, 3] = 20.0
    perfect_masks = torch.full((1, 3, 8, 8), -20.0)
    perfect_masks[0, 0, :, :] = torch.where(labels[0] == 0, 20.0, -20.0)
    perfect_masks[0, 1] = torch.where(labels[0] == 2, 20.0, -20.0)
    loss, terms = set_prediction_loss(perfect_classes, perfect_masks, labels, num_classes=3)
    assert float(loss) < 1e-3 and float(terms["dice"]) < 1e-3
    classes = torch.randn(1, 3, 4, requires_grad=True)
    masks = torch.randn(1, 3, 8, 8, requires_grad=True)
    optimizer = torch.optim.Adam([classes, masks], lr=0.1)
    losses = []
    for _ in range(20):
        loss, _ = set_prediction_loss(classes, masks, labels, num_classes=3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


def test_rba_outlier_loss_equals_numpy(rng):
    classes = rng.normal(size=(1, 3, 4)) * 2
    masks = rng.normal(size=(1, 3, 4, 5)) * 2
    labels = rng.choice([0, 1, 2, 254, 255], size=(1, 4, 5))
    loss = rba_outlier_loss(torch.from_numpy(classes).float(), torch.from_numpy(masks).float(),
                            torch.from_numpy(labels), num_classes=3, inlier_upper=-0.5, outlier_lower=5.0)
    e = np.exp(classes[0] - classes[0].max(1, keepdims=True))
    p = np.einsum("qk,qhw->khw", (e / e.sum(1, keepdims=True))[:, :3], _sigmoid(masks[0]))
    s = -np.tanh(p).sum(0)
    inlier, outlier = labels[0] < 3, labels[0] == 254
    expected = 0.5 * (np.mean(np.maximum(s[inlier] + 0.5, 0) ** 2) + np.mean(np.maximum(5 - s[outlier], 0) ** 2))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.fixture
def data(tmp_path):
    return write_tiny_cityscapes(tmp_path / "data")


def _config(data, out, recipe="mask-baseline", **overrides):
    values = dict(data=str(data), out=str(out), arch_params=TINY, steps=4, batch_size=2, crop_size=32, log_every=1,
                  ckpt_every=2, warmup_steps=0)
    values.update(overrides)
    return make_config(recipe, **values)


def _recipe_losses(recipe, model, config, data_batch, steps=8):
    module = recipe.setup(model, config)
    module.train()
    set_batchnorm_mode(module, config.bn)  # as the trainer does (rba: frozen)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=config.lr)
    batch = recipe.batch(data_batch, np.random.default_rng(0))
    losses = []
    for _ in range(steps):
        loss, _ = recipe.loss(module, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _batch():
    labels = torch.full((2, 32, 32), 2, dtype=torch.int64)
    labels[:, 20:] = 0
    labels[:, :8] = 10
    images = (labels.float() / 20.0)[:, None].expand(-1, 3, -1, -1) + 0.05 * torch.rand(2, 3, 32, 32)
    return {"image": images, "label": labels, "seed": torch.tensor([1, 2])}


def test_mask_baseline_and_rba_steps_decrease_their_losses(data, tmp_path):
    torch.manual_seed(0)
    model = build_model("small-mask2former", num_classes=19, **TINY)
    config = _config(data, tmp_path / "a", lr=3e-3)
    losses = _recipe_losses(get_recipe("mask-baseline"), model, config, _batch())
    assert losses[-1] < losses[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = _config(data, tmp_path / "b", recipe="rba", outliers=str(data / "outliers"), lr=1e-2)
    losses = _recipe_losses(get_recipe("rba"), model, config, _batch())
    assert losses[-1] < losses[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("class_embed.", "query_feat.", "query_pos.")) for k in changed)


def test_trainer_runs_resumes_and_fine_tunes_a_mask_model(data, tmp_path):
    straight = tmp_path / "straight"
    train(_config(data, straight, steps=4))

    def interrupt(step, record):
        if step == 3:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, interrupted, steps=4), callback=interrupt)
    assert torch.load(interrupted / STATE_FILE, weights_only=True)["step"] == 2
    summary = train(_config(data, interrupted, steps=4, resume=True))
    assert summary["steps"] == 4 and 0.0 <= summary["val_mIoU"] <= 1.0
    a, b = (load_checkpoint(p / "checkpoint")[0].state_dict() for p in (straight, interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert all({"ce", "mask", "dice"} <= set(r) for r in log)

    rba = tmp_path / "rba"
    train(_config(data, rba, recipe="rba", init=str(straight / "checkpoint"), outliers=str(data / "outliers"),
                  steps=2))
    model, meta = load_checkpoint(rba / "checkpoint")
    assert meta["architecture"] == "small-mask2former"
    assert MaskAdapter(model.eval())(torch.rand(1, 3, 32, 32)).extras["class_logits"].shape == (1, 6, 20)
    log = [json.loads(line) for line in (rba / "log.jsonl").read_text().splitlines()]
    assert all("rba" in r for r in log)


def test_mask_recipes_refuse_per_pixel_networks_and_missing_outliers(data, tmp_path):
    with pytest.raises(OodsegError, match="needs a mask-classification network"):
        train(_config(data, tmp_path / "x", arch="small", arch_params={}))
    bare = write_tiny_cityscapes(tmp_path / "bare", outliers=False)
    with pytest.raises(OodsegError, match="outliers: rba needs an outlier pool"):
        train(_config(bare, tmp_path / "y", recipe="rba"))
