"""Everything runs on an imported DeepWV3Plus (issue 14): `oodseg import` of an NVIDIA-layout file, then
every post-hoc score, PGN on both layers, the presets, `evaluate --segmentation`, `meta --probs` and
`train --recipe rpl --init` through the CLI on a tiny SMIYC-layout dataset of 32×64 frames."""
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.special import softmax

from oodseg.cli import main
from oodseg.models import DeepWV3Plus, load_checkpoint

from seed_fixtures import nvidia_checkpoint, write
from training_fixtures import write_tiny_cityscapes

pytestmark = pytest.mark.slow
H, W, N = 32, 64, 3
POST_HOC = ["msp", "entropy", "variation_ratio", "margin", "max_logit", "sml", "energy", "jsd", "feature_norm",
            "n_max_logit", "n_energy", "n_energy_cw", "pgn", "pgn[layer=second_to_last,log_scale=true]",
            "mc_dropout[samples=2]", "odin", "mahalanobis"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An NVIDIA-layout file of a random DeepWV3Plus(19), imported; a SMIYC anomaly tree; a Cityscapes root."""
    base = tmp_path_factory.mktemp("wv3")
    torch.manual_seed(0)
    model = DeepWV3Plus(19)
    source = write(nvidia_checkpoint(model, model.state_dict()), base / "cityscapes_best.pth", legacy=False)
    del model
    run("import", source, "--out", base / "ckpt")
    source.unlink()
    rng = np.random.default_rng(0)
    root = base / "anomaly"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"f{i}.png")
        label = rng.integers(0, 19, (H, W)).astype(np.uint8)
        label[8:20, 20:40] = 254
        Image.fromarray(label).save(root / "labels_masks" / f"f{i}_labels_trainIds.png")
        Image.fromarray(np.where(label == 254, 1, 0).astype(np.uint8)).save(
            root / "labels_masks" / f"f{i}_labels_semantic.png")
    data = write_tiny_cityscapes(base / "data", n_train=2, n_val=1, size=(H, W))
    return base, base / "ckpt", root, data


def _read(path):
    with h5py.File(path, "r") as f:
        return f["value"][()]


def test_every_score_runs_on_the_imported_network(world):
    base, ckpt, root, data = world
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["architecture"] == "deepwv3plus" and meta["conventions"]["head"] == "final.6"
    args = ["score", "--checkpoint", ckpt, "--images", root, "--dataset-kind", "smiyc-anomaly",
            "--fit-data", data / "cityscapes", "--fit-frames", 2, "--out", base / "scores", "--json"]
    summary = json.loads(run(*args, *sum((["--method", m] for m in POST_HOC), [])).stdout)
    assert len(summary["methods"]) == len(POST_HOC) and summary["written"] == N
    for key in summary["methods"]:
        value = _read(base / "scores" / key / "anomaly" / "f0.hdf5")
        assert value.shape == (H, W) and np.isfinite(value).all(), key


def test_presets_on_the_imported_network(world):
    base, ckpt, root, data = world
    run("score", "--checkpoint", ckpt, "--images", root, "--preset", "meta-ood", "--out", base / "meta-ood")
    model, _ = load_checkpoint(ckpt)
    image = np.asarray(Image.open(root / "images" / "f1.png"), dtype=np.float32) / 255
    with torch.no_grad():  # the network's own output: stride 2, upsampled with align_corners=True
        logits = model.eval()(torch.from_numpy(image).permute(2, 0, 1)[None])[0].double().numpy()
    p = softmax(logits, axis=0)
    expected = -(p * np.log(p)).sum(axis=0) / np.log(19)
    np.testing.assert_allclose(_read(base / "meta-ood" / "entropy" / "anomaly" / "f1.hdf5"), expected, atol=1e-5)
    summary = json.loads(run("score", "--checkpoint", ckpt, "--images", root, "--preset", "pgn",
                             "--out", base / "pgn", "--json").stdout)
    assert summary["preset"] == "pgn" and len(summary["methods"]) == 20
    run("score", "--checkpoint", ckpt, "--images", root, "--preset", "smiyc-baselines", "--fit-data",
        data / "cityscapes", "--fit-frames", 2, "--out", base / "smiyc")


def test_evaluate_segmentation_and_meta_on_the_imported_network(world):
    base, ckpt, root, data = world
    scores = base / "scores" / "entropy" / "anomaly"
    if not scores.is_dir():
        run("score", "--checkpoint", ckpt, "--images", root, "--method", "entropy", "--out", base / "scores")
    result = run("evaluate", "--root", root, "--scores", scores, "--segmentation", "--json", base / "seg.json")
    seg = json.loads((base / "seg.json").read_text())["segmentation"]
    assert 0 <= seg["mIoU"] <= 1 and len(seg["classes"]) == 19, result.output
    run("meta", "--dataset", "smiyc-anomaly", "--root", root, "--scores", scores, "--probs", ckpt,
        "--segments", "entropy:0.3", "--cv", "image-kfold:3", "--json", base / "meta.json")
    assert json.loads((base / "meta.json").read_text())["schema"] == "oodseg.meta"


def test_rpl_trains_on_the_imported_network(world):
    base, ckpt, root, data = world
    run("train", "--recipe", "rpl", "--data", data, "--init", ckpt, "--out", base / "rpl", "--steps", 1,
        "--batch-size", 1, "--crop-size", 32, "-p", "samples_per_group=16")
    model, meta = load_checkpoint(base / "rpl" / "checkpoint")
    assert meta["architecture"] == "rpl" and meta["params"]["residual_module"] == "final"
    assert model.rpl.residual_head.out_channels == 304  # dec0: the published layout
    summary = json.loads(run("score", "--checkpoint", base / "rpl" / "checkpoint", "--images", root,
                             "--preset", "rpl", "--out", base / "rpl-scores", "--json").stdout)
    assert summary["methods"] == ["energy"] and np.isfinite(_read(base / "rpl-scores" / "energy" / "anomaly"
                                                                   / "f0.hdf5")).all()
