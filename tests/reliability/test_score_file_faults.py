"""Score files under faults (issue 18, items 1 and 7): a full disk while writing hdf5 files, and crafted
hdf5 files whose ``value`` is not a real-valued map.

The full disk is faked with ``OSError(ENOSPC)`` from the file writes (always run) and, as root, made real
with a 2 MB tmpfs (``slow``; fails loudly where it cannot mount). The hdf5 reference is independent: the
bytes of the same dataset written by h5py to a file on disk, read back with the official SMIYC reader
(``h5py.File(path)["value"][:]``).
"""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main
from oodseg.data import read_score, write_score
from oodseg.errors import OodsegError

from model_fixtures import confident_checkpoint
from faults import disk_full_for

TINY = {"num_classes": 4, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}


@pytest.fixture
def frames(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for fid in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{fid}.png")
    return folder


@pytest.fixture
def checkpoint(tmp_path):
    return confident_checkpoint(tmp_path / "ckpt", TINY)


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("compression, filters", [  # the filters docs/performance.md names for each choice
    ("none", {}), ("gzip", {"compression": "gzip", "compression_opts": 1, "shuffle": True}),
    ("lzf", {"compression": "lzf", "shuffle": True})])
def test_hdf5_file_is_the_bytes_h5py_writes_itself_and_the_official_reader_reads_it(tmp_path, rng, compression,
                                                                                    filters):
    value = rng.normal(size=(37, 53)).astype(np.float32)
    with h5py.File(tmp_path / "reference.hdf5", "w") as f:  # how the files were written before: HDF5 on disk
        f.create_dataset("value", data=value, **filters)
    write_score(tmp_path / "a.hdf5", value, compression=compression)
    write_score(tmp_path / "b.hdf5", value, compression=compression)
    assert (tmp_path / "a.hdf5").read_bytes() == (tmp_path / "reference.hdf5").read_bytes()
    assert (tmp_path / "a.hdf5").read_bytes() == (tmp_path / "b.hdf5").read_bytes()  # deterministic
    with h5py.File(tmp_path / "a.hdf5", "r") as f:  # the SegmentMeIfYouCan reader
        np.testing.assert_array_equal(f["value"][:], value)
    for half in ("float16",):
        write_score(tmp_path / "h.hdf5", value, dtype=half)
        with h5py.File(tmp_path / "h.hdf5", "r") as f:
            np.testing.assert_array_equal(f["value"][:], value.astype(np.float16))


def test_full_disk_while_writing_a_score_file_raises_oserror_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s" / "a.hdf5"
    write_score(path, np.ones((4, 5), np.float32))
    before = path.read_bytes()
    disk_full_for(".hdf5", monkeypatch)
    with pytest.raises(OSError) as info:
        write_score(path, np.zeros((4, 5), np.float32))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["a.hdf5"]


def test_score_on_a_full_disk_is_one_line_keeps_complete_files_and_resumes(frames, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(main, ["score", "--checkpoint", str(checkpoint), "--images", str(frames), "--method", "msp",
                                 "--out", str(out)])
    assert first.exit_code == 0, first.output
    kept = _files(out)
    disk_full_for(".hdf5", monkeypatch)
    args = ["score", "--checkpoint", str(checkpoint), "--images", str(frames), "--method", "entropy", "--out", str(out)]
    for _ in range(2):  # a rerun on the still-full disk fails the same way
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: ")
        assert "No space left on device" in result.output and "entropy" in result.output and ".hdf5" in result.output
        assert not [p for p in out.rglob("*") if ".partial" in p.name]
        assert all(p.read_bytes() == data for p, data in kept.items())  # the complete msp run is untouched
        assert not list((out / "entropy").rglob("*.hdf5"))
    monkeypatch.undo()
    resumed = runner.invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    assert len(list((out / "entropy" / "imgs").glob("*.hdf5"))) == 3


@pytest.mark.slow
def test_score_on_a_real_full_tmpfs(frames, checkpoint, tmp_path):
    """A 2 MB tmpfs filled up: exit 2, one line, no partial file, the same on a rerun (was: segfault, exit 139)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs: run it as root on Linux (the fake-ENOSPC tests cover the rest)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 48 * 1024))
        command = [str(Path(sys.executable).parent / "oodseg"), "score", "--checkpoint", str(checkpoint),
                   "--images", str(frames), "--method", "msp", "--method", "entropy", "--method", "energy",
                   "--out", str(mount / "sc")]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}
        for _ in range(2):
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
            assert proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr
            assert not [p for p in mount.rglob("*") if ".partial" in p.name]
            for hdf5 in mount.rglob("*.hdf5"):  # whatever was completed reads back
                read_score(hdf5)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- crafted files (item 7) -------------------------------------------------------------------------

def _crafted(path: Path, kind: str) -> None:
    with h5py.File(path, "w") as f:
        if kind == "strings":
            f.create_dataset("value", data=np.array([[b"a", b"b"], [b"c", b"d"]]))
        elif kind == "vlen strings":
            f.create_dataset("value", data=np.array([["x", "yy"], ["z", "w"]], dtype=object),
                             dtype=h5py.string_dtype())
        elif kind == "complex":
            f.create_dataset("value", data=np.full((4, 4), 1 + 2j))
        elif kind == "huge":
            f.create_dataset("value", data=np.array([[1e300, 0.0], [1.0, 2.0]]))
        elif kind == "group":
            f.create_group("value").create_dataset("x", data=np.zeros((2, 2)))


@pytest.mark.parametrize("kind, message", [
    ("strings", "score map holds strings; expected real numbers"),
    ("vlen strings", "score map holds objects (e.g. strings); expected real numbers"),
    ("complex", "score map holds complex numbers; expected real numbers"),
    ("huge", "score map holds values up to 1e+300, beyond the float32 range (±3.4e+38); rescale the scores"),
    ("group", "no dataset 'value' in the HDF5 file ('value' is a group)"),
])
def test_crafted_hdf5_value_is_refused_with_one_line_naming_the_file(tmp_path, kind, message):
    path = tmp_path / "f.hdf5"
    _crafted(path, kind)
    for native in (False, True):
        with pytest.raises(OodsegError) as info:
            read_score(path, native=native)
        assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("kind", ["strings", "complex", "huge", "group"])
def test_evaluate_refuses_crafted_score_files(tmp_path, kind):
    root = tmp_path / "anomaly"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / "f.png")
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(root / "labels_masks" / "f_labels_semantic.png")
    scores = tmp_path / "scores" / "m" / "anomaly"
    scores.mkdir(parents=True)
    _crafted(scores / "f.hdf5", kind)
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "smiyc-anomaly", "--root", str(root),
                                       "--scores", str(scores), "--json"])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and str(scores / "f.hdf5") in result.stderr
