"""`oodseg score` run folders (issue 18, items 3-5 and extras): provenance per method, names that become
folders, read-only outputs, the output lock, permissions, and a SynthStreet root given as --images.

References are independent of the code under test: checksums with hashlib, file bytes and mtimes
before/after, the segmentation result of an explicit ``--probs`` checkpoint, modes from ``os.stat``,
a lock taken with ``fcntl.flock`` directly.
"""
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from model_fixtures import confident_checkpoint
from faults import read_only_below

from oodseg.cli import main

TINY = {"num_classes": 19, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}
H, W = 24, 40


@pytest.fixture
def track(tmp_path, rng):
    """A SMIYC anomaly track with semantic labels (trainIds, 254 outlier, 255 void) and OoD labels."""
    root = tmp_path / "anomaly"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for fid in ("f0", "f1"):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{fid}.png")
        label = rng.integers(0, 19, (H, W)).astype(np.uint8)
        label[4:12, 6:18] = 254
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_trainIds.png")
        ood = np.where(label == 254, 1, 0).astype(np.uint8)
        Image.fromarray(ood).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
    return root


@pytest.fixture
def checkpoints(tmp_path):
    return confident_checkpoint(tmp_path / "ckpt_a", TINY, seed=0), confident_checkpoint(tmp_path / "ckpt_b", TINY, seed=1)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _score(checkpoint, images, out, *args):
    return _cli("score", "--checkpoint", checkpoint, "--images", images, "--out", out, *args)


def _sha(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def _manifest(out: Path, method: str, dataset: str = "anomaly") -> dict:
    return json.loads((out / "_manifest" / dataset / f"{method}.json").read_text())


def _snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# --- item 3: provenance per method ------------------------------------------------------------------

def test_a_method_added_with_another_checkpoint_keeps_the_first_methods_provenance(track, checkpoints, tmp_path):
    a, b = checkpoints
    out = tmp_path / "out"
    assert _score(a, track, out, "--method", "msp").exit_code == 0
    msp_files = _snapshot(out / "msp")
    predictions_a = _snapshot(out / "_prediction")
    result = _score(b, track, out, "--method", "entropy")  # no --overwrite needed, msp untouched
    assert result.exit_code == 0, result.output
    assert _snapshot(out / "msp") == msp_files
    assert all(_snapshot(out / "_prediction")[p] == v for p, v in predictions_a.items())
    assert _manifest(out, "msp")["checkpoint_sha256"] == _sha(a) and _manifest(out, "msp")["complete"] is True
    assert _manifest(out, "entropy")["checkpoint_sha256"] == _sha(b)
    folders = sorted(p.name for p in (out / "_prediction").iterdir())
    assert folders == sorted([_sha(a)[:16], _sha(b)[:16]])  # the second checkpoint's predictions never overwrite

    # evaluate --segmentation uses the checkpoint of the method it evaluates
    results = {}
    for method, extra in (("msp", ()), ("msp", ("--probs", a)), ("msp", ("--probs", b)), ("entropy", ())):
        run = _cli("evaluate", "--root", track, "--scores", out / method / "anomaly", "--segmentation", "--json", *extra)
        assert run.exit_code == 0, run.output
        results[(method, extra)] = json.loads(run.stdout)
    assert results[("msp", ())]["probs"] == str(a.resolve())
    assert results[("entropy", ())]["probs"] == str(b.resolve())
    assert results[("msp", ())]["segmentation"] == results[("msp", ("--probs", a))]["segmentation"]
    assert results[("msp", ())]["segmentation"]["mIoU"] != results[("msp", ("--probs", b))]["segmentation"]["mIoU"]


def test_overwrite_is_scoped_to_the_methods_asked_for(track, checkpoints, tmp_path):
    a, b = checkpoints
    out = tmp_path / "out"
    assert _score(a, track, out, "--method", "msp", "--method", "entropy").exit_code == 0
    entropy_files = _snapshot(out / "entropy")
    refused = _score(b, track, out, "--method", "msp")
    _one_line_error(refused, "msp.json", "checkpoint_sha256", "--overwrite")
    replaced = _score(b, track, out, "--method", "msp", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert _snapshot(out / "entropy") == entropy_files
    assert _manifest(out, "entropy")["checkpoint_sha256"] == _sha(a)
    assert _manifest(out, "msp")["checkpoint_sha256"] == _sha(b)
    again = _score(b, track, out, "--method", "msp")
    _one_line_error(again, "already complete")


def test_evaluate_refuses_a_checkpoint_replaced_since_scoring(track, checkpoints, tmp_path):
    a, b = checkpoints
    out = tmp_path / "out"
    assert _score(a, track, out, "--method", "msp").exit_code == 0
    for name in ("model.safetensors", "model.json"):  # retrained in place
        (a / name).write_bytes((b / name).read_bytes())
    result = _cli("evaluate", "--root", track, "--scores", out / "msp" / "anomaly", "--segmentation")
    _one_line_error(result, "now holds other weights", "--probs")


def test_legacy_run_folder_is_read_and_its_methods_are_not_silently_reattributed(track, checkpoints, tmp_path):
    a, b = checkpoints
    out = tmp_path / "out"
    assert _score(a, track, out, "--method", "msp").exit_code == 0
    manifest = _manifest(out, "msp")  # turn the folder into the layout of oodseg before per-method provenance
    legacy = {k: v for k, v in manifest.items() if k not in ("method", "checkpoint_sha256", "predictions")}
    legacy.update(version=1, methods=["msp"], params={"msp": manifest["params"]})
    (out / "_manifest" / "anomaly.json").write_text(json.dumps(legacy))
    (out / "_manifest" / "anomaly" / "msp.json").unlink()
    (out / "_prediction" / _sha(a)[:16] / "anomaly").rename(out / "_prediction" / "anomaly")
    evaluated = _cli("evaluate", "--root", track, "--scores", out / "msp" / "anomaly", "--segmentation", "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["probs"] == str(a.resolve())
    _one_line_error(_score(b, track, out, "--method", "msp"), "earlier oodseg", "--overwrite")
    added = _score(b, track, out, "--method", "energy")
    assert added.exit_code == 0, added.output
    assert _manifest(out, "energy")["checkpoint_sha256"] == _sha(b)


def test_one_dataset_name_cannot_hold_two_roots(track, checkpoints, tmp_path):
    a, _ = checkpoints
    out = tmp_path / "out"
    other = tmp_path / "other" / "anomaly"
    other.parent.mkdir()
    (other / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(other / "images" / "f0.png")
    assert _score(a, track, out, "--method", "msp").exit_code == 0
    result = _score(a, other, out, "--method", "entropy", "--dataset-kind", "smiyc-anomaly")
    _one_line_error(result, "holds maps of", "--dataset-name")


# --- item 4: names that become path components --------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a\\b", ""])
def test_dataset_names_that_are_not_one_folder_are_refused(track, checkpoints, tmp_path, name):
    out = tmp_path / "deep" / "out"
    result = _score(checkpoints[0], track, out, "--method", "msp", "--dataset-name", name)
    _one_line_error(result, "--dataset-name")
    assert not [p for p in tmp_path.rglob("*.hdf5")] and not (tmp_path / "x").exists()


def test_meta_method_cannot_escape_filtered_out(track, checkpoints, tmp_path):
    a, _ = checkpoints
    out = tmp_path / "out"
    assert _score(a, track, out, "--method", "entropy").exit_code == 0
    result = _cli("meta", "--root", track, "--scores", out / "entropy" / "anomaly", "--probs", a, "--cv", "loo",
                  "--filtered-out", tmp_path / "filtered", "--method", "../../m")
    _one_line_error(result, "--method", "../../m")
    assert not list(tmp_path.rglob("*_meta"))


# --- item 5: read-only outputs -------------------------------------------------------------------------

def test_score_into_a_read_only_folder_is_one_line(track, checkpoints, tmp_path, monkeypatch):
    read_only_below(tmp_path / "ro", monkeypatch)
    result = _score(checkpoints[0], track, tmp_path / "ro" / "out", "--method", "msp")
    _one_line_error(result, "Read-only file system")


def test_evaluate_save_into_a_read_only_folder_fails_before_printing(track, checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _score(checkpoints[0], track, out, "--method", "msp").exit_code == 0
    (tmp_path / "ro").mkdir()
    read_only_below(tmp_path / "ro", monkeypatch)
    result = _cli("evaluate", "--root", track, "--scores", out / "msp" / "anomaly", "--json",
                  "--save", tmp_path / "ro" / "r.json")
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr


def test_printed_results_on_a_full_disk_are_one_line(track, checkpoints, tmp_path):
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.fail("needs /dev/full (Linux) to fill standard output")
    out = tmp_path / "out"
    assert _score(checkpoints[0], track, out, "--method", "msp").exit_code == 0
    command = [str(Path(sys.executable).parent / "oodseg"), "evaluate", "--root", str(track),
               "--scores", str(out / "msp" / "anomaly"), "--json"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"})
    assert proc.returncode == 2 and proc.stderr == "error: standard output: No space left on device (disk full)\n"


# --- extras ---------------------------------------------------------------------------------------------

def test_a_second_score_into_a_locked_folder_is_refused(track, checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".oodseg-score.lock", "w") as held:  # another process is scoring into out
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _score(checkpoints[0], track, out, "--method", "msp")
        _one_line_error(result, "another oodseg score is writing here")
        assert not list(out.rglob("*.hdf5"))
    assert _score(checkpoints[0], track, out, "--method", "msp").exit_code == 0  # released: proceeds


def test_outputs_honour_the_umask(track, checkpoints, tmp_path):
    previous = os.umask(0o002)
    try:
        out = tmp_path / "out"
        assert _score(checkpoints[0], track, out, "--method", "msp").exit_code == 0
        assert _cli("evaluate", "--root", track, "--scores", out / "msp" / "anomaly",
                    "--save", tmp_path / "res" / "anomaly" / "msp.json").exit_code == 0
    finally:
        os.umask(previous)
    files = [p for p in [*out.rglob("*"), *(tmp_path / "res").rglob("*")] if p.is_file()]
    assert len(files) >= 6
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o664}
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_dir()} == {0o775}


def test_a_synthstreet_root_is_not_scored_as_photos(track, checkpoints, tmp_path):
    root = tmp_path / "synth"
    (root / "anomaly").mkdir(parents=True)
    (root / "synthstreet.json").write_text(json.dumps({"schema": "oodseg.synth"}))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "anomaly" / "label.png")
    result = _score(checkpoints[0], root, tmp_path / "out", "--method", "msp")
    _one_line_error(result, "SynthStreet root", "anomaly")


def test_a_checkpoint_without_its_weights_checksum_is_refused(track, checkpoints, tmp_path):
    a, _ = checkpoints
    meta = json.loads((a / "model.json").read_text())
    del meta["weights_sha256"]
    (a / "model.json").write_text(json.dumps(meta))
    _one_line_error(_score(a, track, tmp_path / "out", "--method", "msp"), "weights_sha256")
