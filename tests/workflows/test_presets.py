"""`oodseg score --preset`: each preset's expansion, and the RPL / Meta-OoD maps against numpy references."""
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from scipy.special import logsumexp, softmax

from oodseg import scores
from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.models import SmallSegNet, register_architecture, save_checkpoint
from oodseg.workflows.presets import PRESETS, get_preset
from oodseg.workflows.score import parse_method

from numpy_references import numpy_gaussian_blur

TINY = {"num_classes": 4, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}
PGN_EXPECTED = {(label, layer, p) for label in ("onehot", "uniform") for layer in ("last", "second_to_last")
                for p in (0.1, 0.3, 0.5, 1, 2)}


class CornerSegNet(SmallSegNet):
    """SmallSegNet that upsamples its logits with align_corners=True, as DeepWV3Plus does."""

    align_corners = True

    def forward(self, images):
        logits = self.classifier(self.features(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)


register_architecture("test-corner-segnet", CornerSegNet)


@pytest.fixture
def corner_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CornerSegNet(**TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        model.classifier.weight.mul_(5)
    save_checkpoint(model.eval(), tmp_path / "ckpt", "test-corner-segnet", TINY)
    return tmp_path / "ckpt", model.eval()


@pytest.fixture
def frames(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for fid, (h, w) in {"a": (24, 40), "b": (19, 33)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{fid}.png")
    return folder


def test_each_preset_expands_to_its_papers_protocol():
    expected = {
        "rpl": (["energy"], "image", {"kernel_size": 7, "sigma": 1.0}),
        "densehybrid": (["densehybrid"], "image", None),
        "smiyc-baselines": (["msp", "entropy", "odin", "mahalanobis"], "image", None),
        "meta-ood": (["entropy"], "image", None),
        "pgn": (["pgn"] * 20, "head", None),
    }
    assert set(PRESETS) == set(expected)
    for name, (methods, resolution, smooth) in expected.items():
        preset = get_preset(name)
        assert [parse_method(m)[0] for m in preset.methods] == methods, name
        assert (preset.resolution, preset.smooth) == (resolution, smooth), name
        assert preset.paper and preset.source
        record = preset.as_dict()
        assert record["methods"] == list(preset.methods) and record["name"] == name
    odin = scores.get("odin", **parse_method(get_preset("smiyc-baselines").methods[2])[1])
    assert (odin.params["temperature"], odin.params["epsilon"]) == (3.0, 1e-4)  # SMIYC's T and ε
    grid = {(p["label"], p["layer"], p["p"]) for _, p in map(parse_method, get_preset("pgn").methods)}
    assert grid == PGN_EXPECTED
    for _, params in map(parse_method, get_preset("pgn").methods):
        scorer = scores.get("pgn", **params)
        assert scorer.params["variant"] == "paper" and scorer.params["log_scale"] is True
    with pytest.raises(OodsegError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_parse_method_reads_bracket_parameters():
    assert parse_method("entropy") == ("entropy", {})
    assert parse_method("pgn[label=uniform,p=0.3]") == ("pgn", {"label": "uniform", "p": 0.3})
    for bad in ("pgn[label=uniform", "[p=1]", "pgn[p]"):
        with pytest.raises(OodsegError, match=r"^methods '"):
            parse_method(bad)


def _read(path):
    with h5py.File(path, "r") as f:
        return f["value"][()]


def _full_logits(model, frame):
    image = torch.from_numpy(np.asarray(Image.open(frame), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(image)[0].double().numpy()  # (C, H, W), upsampled by the model (align_corners=True)


def test_rpl_preset_is_energy_of_the_upsampled_logits_then_a_7x7_reflect_blur(corner_checkpoint, frames, tmp_path):
    checkpoint, model = corner_checkpoint
    result = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                       "--preset", "rpl", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert "preset rpl" in result.stderr and "gaussian 7×7" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["preset"] == "rpl" and summary["methods"] == ["energy"]
    assert summary["resolution"] == "image" and summary["smooth"] == {"kernel_size": 7, "sigma": 1.0}
    manifest = json.loads((tmp_path / "out" / "_manifest" / "imgs" / "energy.json").read_text())
    assert manifest["preset"] == "rpl" and manifest["smooth"] == summary["smooth"]
    for fid in ("a", "b"):
        energy = -logsumexp(_full_logits(model, frames / f"{fid}.png"), axis=0)
        expected = numpy_gaussian_blur(energy[None], 7, 1.0)[0]
        got = _read(tmp_path / "out" / "energy" / "imgs" / f"{fid}.hdf5")
        np.testing.assert_allclose(got, expected, atol=2e-5)
        assert np.abs(got - energy).max() > 1e-3  # the blur did change the map


def test_meta_ood_preset_is_the_entropy_of_the_full_resolution_softmax(corner_checkpoint, frames, tmp_path):
    checkpoint, model = corner_checkpoint
    result = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                       "--preset", "meta-ood", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for fid in ("a", "b"):
        p = softmax(_full_logits(model, frames / f"{fid}.png"), axis=0)
        expected = -(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])
        np.testing.assert_allclose(_read(tmp_path / "out" / "entropy" / "imgs" / f"{fid}.hdf5"), expected, atol=1e-5)
    head = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                     "--method", "entropy", "--out", str(tmp_path / "head")])
    assert head.exit_code == 0, head.output
    at_head = _read(tmp_path / "head" / "entropy" / "imgs" / "a.hdf5")
    assert np.abs(at_head - _read(tmp_path / "out" / "entropy" / "imgs" / "a.hdf5")).max() > 1e-4


def test_image_resolution_refuses_scores_of_the_block_and_unknown_presets(corner_checkpoint, frames, tmp_path):
    checkpoint, _ = corner_checkpoint
    result = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                       "--preset", "meta-ood", "--method", "pgn[layer=second_to_last]",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "only at the head's resolution" in result.output
    result = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                       "--preset", "nope", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown preset 'nope'" in result.output
    result = CliRunner().invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--preset" in result.output


def test_score_help_lists_every_preset_with_its_paper():
    text = CliRunner().invoke(main, ["score", "--help"]).output
    for preset in PRESETS.values():
        assert f"{preset.name}: {preset.paper}" in " ".join(text.split())
