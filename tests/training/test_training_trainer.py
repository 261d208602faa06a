"""The training loop: outputs, exact resume, recipes, schedules and one-line errors before training."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from oodseg.errors import OodsegError
from oodseg.models import load_checkpoint, register_architecture, save_checkpoint
from oodseg.training import make_config
from oodseg.workflows.train import train
from oodseg.workflows.train import STATE_FILE, StepBatchSampler, lr_factor
from training_fixtures import TINY_ARCH, write_tiny_cityscapes


@pytest.fixture
def data(tmp_path):
    return write_tiny_cityscapes(tmp_path / "data")


def _config(data, out, **overrides):
    values = dict(data=str(data), out=str(out), arch_params=TINY_ARCH, steps=4, batch_size=2, crop_size=32,
                  log_every=1, ckpt_every=2, lr=5e-3, warmup_steps=0)
    values.update(overrides)
    return make_config(overrides.pop("recipe", "baseline"), **{k: v for k, v in values.items() if k != "recipe"})


def _params(out):
    model, _ = load_checkpoint(out / "checkpoint")
    return model.state_dict()


def test_few_steps_write_checkpoint_log_and_summary(data, tmp_path):
    out = tmp_path / "run"
    summary = train(_config(data, out, steps=3))
    assert json.loads((out / "train.json").read_text()) == summary
    assert summary["schema"] == "oodseg.train" and summary["version"] == 1 and summary["steps"] == 3
    assert summary["recipe"] == "baseline" and summary["checkpoint"] == str(out / "checkpoint")
    assert 0.0 <= summary["val_mIoU"] <= 1.0
    model, meta = load_checkpoint(out / "checkpoint")
    assert meta["architecture"] == "small" and meta["num_classes"] == 19 and meta["step"] == 3
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 19, 32, 32)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all({"step", "epoch", "lr", "loss", "ce", "grad_norm"} <= set(r) for r in log)
    assert all(math.isfinite(r["loss"]) and r["loss"] == r["weighted_ce"] for r in log)  # class-weighted by default
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and "optimizer" in state and "scheduler" in state
    # val mIoU against a numpy re-computation over the val frames
    gts, preds = [], []
    for path in sorted((data / "cityscapes" / "leftImg8bit" / "val").rglob("*.png")):
        image = torch.tensor(np.asarray(Image.open(path)), dtype=torch.float32).permute(2, 0, 1)[None] / 255
        with torch.no_grad():
            preds.append(model(image).argmax(1)[0].numpy().ravel())
        label_path = str(path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit", "_gtFine_labelTrainIds")
        gts.append(np.asarray(Image.open(label_path)).ravel())
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    pred, gt = pred[gt != 255], gt[gt != 255]
    ious = [np.sum((gt == c) & (pred == c)) / np.sum((gt == c) | (pred == c)) for c in range(19)
            if np.any((gt == c) | (pred == c))]
    assert summary["val_mIoU"] == pytest.approx(np.mean(ious), abs=1e-9)


def test_training_reduces_the_loss_and_reaches_a_useful_miou(data, tmp_path):
    summary = train(_config(data, tmp_path / "run", steps=40, batch_size=4, lr=1e-2, log_every=10, ckpt_every=40))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert summary["val_mIoU"] > 0.4


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    straight = tmp_path / "straight"
    train(_config(data, straight, steps=8, optimizer="adam", schedule="poly", color_jitter=0.3))

    def interrupt(step, record):
        if step == 5:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, interrupted, steps=8, optimizer="adam", schedule="poly", color_jitter=0.3),
              callback=interrupt)
    assert torch.load(interrupted / STATE_FILE, weights_only=True)["step"] == 4
    with pytest.raises(OodsegError, match="holds a previous run"):
        train(_config(data, interrupted, steps=8, optimizer="adam", schedule="poly", color_jitter=0.3))
    summary = train(_config(data, interrupted, steps=8, optimizer="adam", schedule="poly", color_jitter=0.3,
                            resume=True))
    assert summary["steps"] == 8
    a, b = _params(straight), _params(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (interrupted / "log.jsonl").read_text().splitlines()]
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def test_resume_refuses_a_changed_config(data, tmp_path):
    train(_config(data, tmp_path / "run", steps=2))
    with pytest.raises(OodsegError, match="batch_size was 2"):
        train(_config(data, tmp_path / "run", steps=4, batch_size=4, resume=True))
    with pytest.raises(OodsegError, match="nothing to resume"):
        train(_config(data, tmp_path / "fresh", resume=True))


def test_entropy_max_recipe_pastes_outliers_and_logs_both_terms(data, tmp_path):
    base = tmp_path / "base"
    train(_config(data, base, steps=2))
    out = tmp_path / "emax"
    summary = train(_config(data, out, recipe="entropy-max", init=str(base / "checkpoint"), steps=3,
                            recipe_params={"lam": 0.9}))
    assert summary["recipe"] == "entropy-max"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:
        assert record["out_pixels"] > 0 and record["out"] >= math.log(19) - 1e-5
        assert record["loss"] == pytest.approx(0.1 * record["ce"] + 0.9 * record["out"], rel=1e-5)
    _, meta = load_checkpoint(out / "checkpoint")
    assert meta["recipe"] == "entropy-max" and meta["architecture"] == "small"


def test_sampler_covers_each_epoch_once_and_splits_batches_by_rank():
    full = [idx for batch in StepBatchSampler(10, 4, seed=3, start_step=0, total_steps=5) for idx, _ in batch]
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    ranks = [list(StepBatchSampler(10, 4, 3, 0, 5, rank=r, world_size=2)) for r in range(2)]
    single = list(StepBatchSampler(10, 4, 3, 0, 5))
    for step in range(5):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(single[step])
    assert list(StepBatchSampler(10, 4, 3, start_step=2, total_steps=5)) == single[2:]


def test_lr_schedules_against_closed_forms():
    poly = make_config("baseline", schedule="poly", poly_power=0.9, warmup_steps=0)
    assert lr_factor(0, 100, poly) == 1.0
    assert lr_factor(50, 100, poly) == pytest.approx(0.5 ** 0.9)
    cosine = make_config("baseline", schedule="cosine", warmup_steps=10)
    assert lr_factor(4, 110, cosine) == pytest.approx(0.5)
    assert lr_factor(60, 110, cosine) == pytest.approx(0.5)
    assert lr_factor(110, 110, cosine) == pytest.approx(0.0, abs=1e-12)


class _NoHead(nn.Module):
    """A segmentation net whose classifier is a 3×3 conv (no 1×1 head)."""

    def __init__(self, num_classes=19):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_bad_inputs_fail_before_training(data, tmp_path):
    with pytest.raises(OodsegError, match="is not a folder"):
        train(_config(tmp_path / "missing", tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodsegError, match="no leftImg8bit/train"):
        train(_config(tmp_path / "empty", tmp_path / "a"))
    register_architecture("test-no-head", _NoHead)
    save_checkpoint(_NoHead(), tmp_path / "nohead", "test-no-head", {"num_classes": 19})
    with pytest.raises(OodsegError, match="no 1×1 Conv2d classifier head"):
        train(_config(data, tmp_path / "b", init=str(tmp_path / "nohead")))
    with pytest.raises(OodsegError, match="checkpoint directory does not exist"):
        train(_config(data, tmp_path / "b", init=str(tmp_path / "nowhere")))
    with pytest.raises(OodsegError, match="outlier pool folder not found"):
        train(_config(data, tmp_path / "c", recipe="entropy-max", outliers=str(tmp_path / "no-pool")))
    with pytest.raises(OodsegError, match="unknown recipe"):
        make_config("nonsense")
    with pytest.raises(OodsegError, match="lam must be in"):
        train(_config(data, tmp_path / "d", recipe="entropy-max", recipe_params={"lam": 2}))
    for name in "abcd":
        assert not (tmp_path / name / "log.jsonl").exists()


def test_time_budget_stops_early_with_a_final_checkpoint_and_epochs_set_the_length(data, tmp_path):
    summary = train(_config(data, tmp_path / "budget", steps=10_000, time_budget=1e-3, ckpt_every=1000))
    assert summary["stopped_early"] and summary["steps"] == 1 and summary["total_steps"] == 10_000
    assert load_checkpoint(tmp_path / "budget" / "checkpoint")[1]["step"] == 1
    summary = train(_config(data, tmp_path / "epochs", steps=None, epochs=0.5, validate=False))
    assert summary["total_steps"] == 2 and summary["val_mIoU"] is None  # 0.5 · 8 images / batch 2


def test_baseline_hard_fraction_and_class_weights_log_their_terms(data, tmp_path):
    train(_config(data, tmp_path / "hard", steps=2, recipe_params={"hard_fraction": 0.25, "class_weight_power": 0}))
    log = [json.loads(line) for line in (tmp_path / "hard" / "log.jsonl").read_text().splitlines()]
    # the loss is the mean CE of the hardest quarter of pixels, never below the plain mean CE
    assert all(r["loss"] == r["weighted_ce"] and r["weighted_ce"] > r["ce"] for r in log)
    train(_config(data, tmp_path / "plain", steps=2, recipe_params={"class_weight_power": 0}))
    log = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["ce"] and "weighted_ce" not in r for r in log)
    with pytest.raises(OodsegError, match="class_weight_power must be in"):
        train(_config(data, tmp_path / "bad", recipe_params={"class_weight_power": -1}))
    with pytest.raises(OodsegError, match="hard_fraction must be in"):
        train(_config(data, tmp_path / "bad", recipe_params={"hard_fraction": 0}))
    with pytest.raises(OodsegError, match="class_uniform: must be a probability"):
        train(_config(data, tmp_path / "bad", class_uniform=1.5))
    assert not (tmp_path / "bad" / "log.jsonl").exists()


@pytest.mark.parametrize("option, value", [("--class-uniform", "1.5"), ("--warmup-steps", "-1")])
def test_train_cli_rejects_bad_schedule_options_in_one_line(tmp_path, option, value):
    from click.testing import CliRunner

    from oodseg.cli import main

    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                       option, value])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and option in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["-p", "foo=1"], "error: --param (recipe baseline): unknown key(s) foo; valid keys: hard_fraction (float), "
                      "class_weight_power (float), head_resolution (bool)"),
    (["-p", "class_weight_power=abc"], "error: --param (recipe baseline): class_weight_power expects float, got 'abc'"),
    (["--recipe", "entropy-max", "-p", "lam=abc"], "error: --param (recipe entropy-max): lam expects float, got 'abc'"),
    (["--arch-param", "widths=abc"], "error: --arch-param (architecture small): widths expects list[int], got 'abc'"),
])
def test_train_cli_names_the_recipe_and_architecture_keys_and_types_in_one_line(data, tmp_path, args, message):
    from click.testing import CliRunner

    from oodseg.cli import main

    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and result.stderr == message + "\n", result.output
    assert not (tmp_path / "run").exists()


def test_a_crop_larger_than_every_training_image_is_refused(data, tmp_path):
    # the tiny frames are 32x48; rescaled by at most 1.25 the shorter side holds a crop of floor(32·1.25) = 40
    assert train(_config(data, tmp_path / "fits", steps=1, crop_size=40, validate=False))["steps"] == 1
    with pytest.raises(OodsegError, match=r"^crop_size: 41 px is larger than every training image \(largest 32x48, "
                                          r"rescaled by at most 1.25\); use at most 40$"):
        train(_config(data, tmp_path / "big", steps=1, crop_size=41))
    with pytest.raises(OodsegError, match=r"largest 32x48, rescaled by at most 1\); use at most 32$"):
        train(_config(data, tmp_path / "big", steps=1, crop_size=33, scale_range=(0.5, 1.0)))
    assert not (tmp_path / "big").exists()


def test_train_cli_resume_keeps_the_saved_options_and_refuses_changed_ones(data, tmp_path):
    from click.testing import CliRunner

    from oodseg.cli import main

    out = tmp_path / "run"
    arch = sum((["--arch-param", f"{k}={json.dumps(v)}"] for k, v in TINY_ARCH.items()), [])
    first = ["train", "--data", str(data), "--out", str(out), "--no-validate", "--log-every", "1"]
    result = CliRunner().invoke(main, [*first, "--steps", "2", "--batch-size", "2", "--crop-size", "32",
                                       "--lr", "0.01", "--weight-decay", "0", *arch])
    assert result.exit_code == 0, result.output
    state = out / STATE_FILE
    before = state.read_bytes()
    # a new rate would be silently undone by the restored optimizer: refused, naming every changed option
    result = CliRunner().invoke(main, [*first, "--resume", "--lr", "0.1", "--weight-decay", "0.5", "--batch-size", "2"])
    assert result.exit_code == 2
    assert result.stderr == ("error: --resume: lr was 0.01 in the interrupted run, now 0.1; weight_decay was 0.0 in the "
                             "interrupted run, now 0.5 (resume with the saved values, or start over with --overwrite)\n")
    assert state.read_bytes() == before
    # options left out keep the saved values (recipe, architecture, lr, ...); a new length is applied
    result = CliRunner().invoke(main, [*first, "--resume", "--steps", "3"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["lr"] == pytest.approx(0.01 * 3 / 50)  # saved lr, baseline warm-up of 50 steps
    meta = load_checkpoint(out / "checkpoint")[1]
    assert meta["step"] == 3 and meta["params"]["widths"] == TINY_ARCH["widths"]
