"""`oodseg score` end to end: files, values, resume, overwrite protection, errors, torchrun."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main
from oodseg.layout import LOCK_FILE
from oodseg.models import load_checkpoint
from oodseg.workflows import pipeline

from model_fixtures import confident_checkpoint

SIZES = {"a": (40, 56), "b": (40, 56), "c": (33, 47)}
TINY = {"num_classes": 4, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}


@pytest.fixture
def frames(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for fid, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{fid}.png")
    return folder


def _checkpoint(path, seed=0, nan_bias=False):
    return confident_checkpoint(path, TINY, seed, nan_bias)


@pytest.fixture
def checkpoint(tmp_path):
    return _checkpoint(tmp_path / "ckpt")


def _score(*args):
    result = CliRunner().invoke(main, ["score", *map(str, args)])
    return result


def _bilinear(a, height, width):
    """Independent numpy bilinear resize with half-pixel centres (align_corners=False), edges clamped."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis(a.shape[0], height)
    x0, x1, wx = axis(a.shape[1], width)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def _read(path):
    with h5py.File(path, "r") as f:
        data = f["value"]
        return data[()], data.dtype, data.compression


def _predictions(out, checkpoint, dataset="imgs"):
    """The prediction folder of ``checkpoint``: ``_prediction/{first 16 hex of its weights' sha256}/{dataset}``."""
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    return out / "_prediction" / digest[:16] / dataset


def _manifest(out, method, dataset="imgs"):
    return json.loads((out / "_manifest" / dataset / f"{method}.json").read_text())


def _head_logits(model, image_path):
    image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model.classifier(model.features(image))[0].double().numpy(), model(image)[0].numpy()


def test_score_writes_smiyc_files_with_correct_values(frames, checkpoint, tmp_path):
    out = tmp_path / "out"
    result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "entropy", "--method", "max_logit",
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["written"] == 3 and summary["skipped"] == 0 and summary["complete"] is True
    model, _ = load_checkpoint(checkpoint)
    for fid, (h, w) in SIZES.items():
        logits, full = _head_logits(model, frames / f"{fid}.png")
        p = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        expected = {"entropy": -(p * np.log(p)).sum(0) / np.log(4), "max_logit": -logits.max(0)}
        for method, reference in expected.items():
            value, dtype, compression = _read(out / method / "imgs" / f"{fid}.hdf5")
            assert dtype == np.float32 and compression is None and value.shape == (h, w)  # default: uncompressed
            np.testing.assert_allclose(value, _bilinear(reference, h, w), rtol=1e-5, atol=1e-5)
        prediction = np.asarray(Image.open(_predictions(out, checkpoint) / f"{fid}.png"))
        assert prediction.dtype == np.uint8 and prediction.shape == (h, w)
        agree = (prediction == full.argmax(0)).mean()
        assert agree > 0.999  # the model's own upsampled logits (ties aside)
    assert summary["methods"] == ["entropy", "max_logit"]
    for method in summary["methods"]:
        manifest = _manifest(out, method)
        assert manifest["schema"] == "oodseg.score" and manifest["version"] == 2 and manifest["method"] == method
        assert manifest["checkpoint"] == str(checkpoint.resolve()) and manifest["dataset_kind"] == "images"
        assert manifest["checkpoint_sha256"] == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
        assert manifest["n_frames"] == 3 and manifest["complete"] is True
        assert manifest["root"] == str(frames.resolve())
        assert out / manifest["predictions"] == _predictions(out, checkpoint)


def test_interrupted_run_resumes_and_finished_run_is_protected(frames, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["--checkpoint", checkpoint, "--images", frames, "--method", "msp", "--method", "energy", "--out", out,
            "--workers", "0"]  # inline writes: the patched write_score runs in this process
    real_write = pipeline.write_score
    calls = []

    def crash_on_fourth(path, array, **options):
        calls.append(path)
        if len(calls) == 4:
            raise RuntimeError("killed")  # the process dies mid-run
        return real_write(path, array, **options)

    monkeypatch.setattr(pipeline, "write_score", crash_on_fourth)
    assert _score(*args).exit_code != 0
    monkeypatch.setattr(pipeline, "write_score", real_write)
    done = sorted(p for p in out.rglob("*.hdf5"))
    assert len(done) == 3
    stamps = {p: p.stat().st_mtime_ns for p in done}
    stale = out / "msp" / "imgs" / ".c.hdf5.x1y2.partial.hdf5"  # left behind by a killed writer
    stale.write_bytes(b"half a file")
    assert _manifest(out, "msp")["complete"] is False

    result = _score(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["written"] == 2 and summary["skipped"] == 1 and summary["complete"] is True
    assert len(list(out.rglob("*.hdf5"))) == 6 and not stale.exists()
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # complete files untouched

    again = _score(*args)
    assert again.exit_code == 2 and "already complete" in again.output and "--overwrite" in again.output
    other = _score("--checkpoint", checkpoint, "--images", frames, "--method", "msp", "--dtype", "float16", "--out", out)
    assert other.exit_code == 2 and "different run" in other.output and "dtype" in other.output
    assert len(again.output.strip().splitlines()) == 1

    os.utime(done[0], ns=(1, 1))
    result = _score(*args, "--overwrite", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["written"] == 3
    assert done[0].stat().st_mtime_ns != 1


def test_outputs_without_manifest_are_not_overwritten(frames, checkpoint, tmp_path):
    out = tmp_path / "out"
    (out / "msp" / "imgs").mkdir(parents=True)
    (out / "msp" / "imgs" / "a.hdf5").write_bytes(b"someone else's file")
    result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "msp", "--out", out)
    assert result.exit_code == 2 and "no manifest" in result.output
    assert (out / "msp" / "imgs" / "a.hdf5").read_bytes() == b"someone else's file"


@pytest.mark.parametrize("extra, message", [
    (["--method", "no_such_score"], "unknown"),
    (["--method", "msp", "--param", "msp"], "METHOD.KEY=VALUE"),
    (["--method", "msp", "--param", "energy.temperature=2"], "not among the methods"),
    (["--method", "sml"], "--fit-data"),
    (["--method", "msp", "--batch-size", "0"], "--batch-size"),
    (["--method", "msp", "--ensemble", "x"], "checkpoint directory does not exist"),
])
def test_bad_requests_fail_with_one_line(frames, checkpoint, tmp_path, extra, message):
    result = _score("--checkpoint", checkpoint, "--images", frames, "--out", tmp_path / "out", *extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list((tmp_path / "out").rglob("*.hdf5")) if (tmp_path / "out").exists() else True


def test_compression_changes_the_storage_not_the_values(frames, checkpoint, tmp_path):
    """--compression gzip / lzf: the same float32 values as the default uncompressed files, read with plain h5py."""
    outs = {}
    for name in ("none", "gzip", "lzf"):
        outs[name] = tmp_path / name
        result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "msp", "--compression", name,
                        "--workers", "0", "--out", outs[name])
        assert result.exit_code == 0, result.output
    for fid in SIZES:
        values = {name: _read(out / "msp" / "imgs" / f"{fid}.hdf5") for name, out in outs.items()}
        assert [c for _, _, c in values.values()] == [None, "gzip", "lzf"]
        for value, dtype, _ in values.values():
            assert dtype == np.float32
            np.testing.assert_array_equal(value, values["none"][0])
    result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "msp", "--compression", "zstd",
                    "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "Invalid value for '--compression': 'zstd' is not one of 'none', 'gzip', 'lzf'" \
        in result.output and not (tmp_path / "bad").exists()


def test_missing_checkpoint_and_images(frames, checkpoint, tmp_path):
    result = _score("--checkpoint", tmp_path / "nope", "--images", frames, "--method", "msp", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = _score("--checkpoint", checkpoint, "--images", tmp_path / "none", "--method", "msp", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not a folder" in result.output


def test_nan_scores_name_the_frame_and_write_nothing(frames, tmp_path):
    bad = _checkpoint(tmp_path / "bad", nan_bias=True)
    out = tmp_path / "out"
    result = _score("--checkpoint", bad, "--images", frames, "--method", "msp", "--out", out)
    assert result.exit_code == 2 and "frame a" in result.output and "msp" in result.output
    assert "NaN" in result.output and not list(out.rglob("*.hdf5")) and not list(out.rglob("_prediction/*/*.png"))


def test_fitted_score_uses_the_fit_data(frames, checkpoint, tmp_path, rng):
    from oodseg.adapter import ModelAdapter
    from oodseg.scores import get

    root = tmp_path / "cs"
    images, labels = [], []
    for i in range(3):
        image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        label = rng.integers(0, 4, (32, 48), dtype=np.uint8)
        (root / "leftImg8bit" / "train" / "x").mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "train" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "leftImg8bit" / "train" / "x" / f"x_{i}_leftImg8bit.png")
        Image.fromarray(label).save(root / "gtFine" / "train" / "x" / f"x_{i}_gtFine_labelTrainIds.png")
        images.append(image)
        labels.append(label)
    out = tmp_path / "out"
    result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "sml", "--fit-data", root,
                    "--out", out)
    assert result.exit_code == 0, result.output
    model, _ = load_checkpoint(checkpoint)
    with ModelAdapter(model) as adapter, torch.no_grad():
        outputs = [adapter(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255) for im in images]
        scorer = get("sml").fit(outputs, [torch.from_numpy(lab)[None].long() for lab in labels])
        image = torch.from_numpy(np.array(Image.open(frames / "c.png"))).permute(2, 0, 1)[None].float() / 255
        expected = _bilinear(scorer(adapter(image))[0].double().numpy(), *SIZES["c"])
    value, _, _ = _read(out / "sml" / "imgs" / "c.hdf5")
    np.testing.assert_allclose(value, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_files(frames, checkpoint, tmp_path, run_oodseg):
    single, double = tmp_path / "one", tmp_path / "two"
    common = ["score", "--checkpoint", checkpoint, "--images", frames, "--method", "entropy", "--method", "energy"]
    run_oodseg(*common, "--out", single)
    run_oodseg(*common, "--out", double, nproc=2)
    def outputs(root):  # the maps and predictions; not the manifests nor the output folder's lock file
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and "_manifest" not in p.parts and p.name != LOCK_FILE)

    files = outputs(single)
    assert len(files) == 9
    assert files == outputs(double)
    assert (single / LOCK_FILE).is_file() and (double / LOCK_FILE).is_file()
    for rel in files:
        if rel.suffix == ".hdf5":
            np.testing.assert_array_equal(_read(single / rel)[0], _read(double / rel)[0])
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(single / rel)), np.asarray(Image.open(double / rel)))
    assert _manifest(double, "entropy")["complete"] is True


def test_model_based_scores_run_the_model(frames, checkpoint, tmp_path):
    from oodseg.adapter import ModelAdapter
    from oodseg.scores import get

    second = _checkpoint(tmp_path / "ckpt2", seed=1)
    out = tmp_path / "out"
    result = _score("--checkpoint", checkpoint, "--images", frames, "--method", "ensemble", "--ensemble", second,
                    "--method", "odin", "--method", "mc_dropout", "--param", "mc_dropout.samples=3",
                    "--param", "mc_dropout.seed=5", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["methods"] == ["ensemble", "odin", "mc_dropout[samples=3,seed=5]"]
    members = [load_checkpoint(checkpoint)[0], load_checkpoint(second)[0]]
    image = torch.from_numpy(np.array(Image.open(frames / "c.png"))).permute(2, 0, 1)[None].float() / 255
    with ModelAdapter(members[0]) as adapter:
        with torch.no_grad():
            # independent: entropy of the two members' mean softmax, normalised by log C
            probs = [torch.softmax(m.classifier(m.features(image)), 1)[0].double().numpy() for m in members]
        mean = (probs[0] + probs[1]) / 2
        ensemble = -(mean * np.log(mean)).sum(0) / np.log(4)
        odin = get("odin")(adapter, image)[0].detach().double().numpy()
    h, w = SIZES["c"]
    np.testing.assert_allclose(_read(out / "ensemble" / "imgs" / "c.hdf5")[0], _bilinear(ensemble, h, w),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(_read(out / "odin" / "imgs" / "c.hdf5")[0], _bilinear(odin, h, w), rtol=2e-3, atol=2e-3)
    mc, _, _ = _read(out / "mc_dropout[samples=3,seed=5]" / "imgs" / "c.hdf5")
    assert mc.shape == (h, w) and np.isfinite(mc).all() and mc.std() > 0
