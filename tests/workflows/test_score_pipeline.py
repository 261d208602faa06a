"""`oodseg score`'s pipeline: decoding workers and writer processes change nothing in the files;
a killed run resumes to the same files with no writer left behind; a failing writer stops the run
with one line; --workers and --precision are checked (issue 19)."""
import fcntl
import filecmp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.scores import get as get_score
from oodseg.workflows.pipeline import autocast_dtype, predict, to_model_input
from oodseg.workflows.workers import WriterPool, resolve_workers

from model_fixtures import confident_checkpoint

TINY = {"num_classes": 4, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}
METHODS = ("msp", "entropy", "energy", "max_logit")


def make_frames(folder: Path, rng, n: int, sizes=((40, 56), (33, 47))) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        h, w = sizes[(i // 3) % len(sizes)]  # runs of equal size, then a change: batches split by size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"f{i:03d}.png")
    return folder


@pytest.fixture
def checkpoint(tmp_path):
    return confident_checkpoint(tmp_path / "ckpt", TINY)


def score_args(checkpoint, images, out, *extra):
    methods = [a for m in METHODS for a in ("--method", m)]
    return ["score", "--checkpoint", str(checkpoint), "--images", str(images), *methods, "--out", str(out),
            *map(str, extra)]


def run_score(*args):
    return CliRunner().invoke(main, list(args))


def files_of(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for p in out.rglob("*")  # maps and predictions (not manifests, not the lock)
                  if p.is_file() and "_manifest" not in p.parts and not p.name.startswith(".oodseg"))


def assert_same_files(a: Path, b: Path) -> None:
    names = files_of(a)
    assert names == files_of(b) and names
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(n) for n in names], shallow=False)
    assert not mismatch and not errors


def test_parallel_and_serial_runs_write_byte_identical_files(checkpoint, tmp_path, rng):
    images = make_frames(tmp_path / "imgs", rng, 8)
    # the same batches (a batch's convolutions may round differently from single frames')
    serial = run_score(*score_args(checkpoint, images, tmp_path / "serial", "--workers", 0, "--batch-size", 3))
    parallel = run_score(*score_args(checkpoint, images, tmp_path / "parallel", "--workers", 2, "--batch-size", 3))
    assert serial.exit_code == 0, serial.output
    assert parallel.exit_code == 0, parallel.output
    assert len(files_of(tmp_path / "serial")) == 8 * (len(METHODS) + 1)
    assert_same_files(tmp_path / "serial", tmp_path / "parallel")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_parallel_run_resumes_to_the_uninterrupted_files(checkpoint, tmp_path, rng):
    images = make_frames(tmp_path / "imgs", rng, 16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "oodseg", *score_args(checkpoint, images, killed, "--workers", 2)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(killed.rglob("*.hdf5"))) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    helpers = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    assert helpers, "no decoding or writer process was running"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in helpers), "a writer or decoder outlived the killed run"
    # every process forked from the run (also any started after the snapshot) shares its flock: free = all gone
    deadline = time.monotonic() + 15
    with open(killed / ".oodseg-score.lock") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "a process of the killed run still holds its lock"
                time.sleep(0.1)
        fcntl.flock(lock, fcntl.LOCK_UN)
    written = files_of(killed)
    assert 0 < len(written) < 16 * (len(METHODS) + 1)

    resumed = run_score(*score_args(checkpoint, images, killed, "--workers", 2, "--json"))
    assert resumed.exit_code == 0, resumed.output
    assert not [p for p in killed.rglob("*") if ".partial" in p.name]
    whole = run_score(*score_args(checkpoint, images, tmp_path / "whole", "--workers", 0))
    assert whole.exit_code == 0, whole.output
    assert_same_files(killed, tmp_path / "whole")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_writer_stops_the_run_with_one_line(checkpoint, tmp_path, rng, workers):
    images = make_frames(tmp_path / "imgs", rng, 9)
    out = tmp_path / "out"
    blocked = out / "entropy" / "imgs" / "f004.hdf5"
    blocked.mkdir(parents=True)  # the writer's rename onto it fails (EISDIR), as a full disk or a permission would
    result = run_score(*score_args(checkpoint, images, out, "--workers", workers))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blocked}: writing failed (IsADirectoryError")
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    for path in out.rglob("*.hdf5"):
        if path.is_file():
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89HDF\r\n\x1a\n"  # a complete HDF5 file or none
    assert len([p for p in out.rglob("f008.*") if p.is_file()]) < len(METHODS) + 1  # the run stopped


def test_writer_pool_bounds_the_jobs_in_flight(tmp_path):
    with WriterPool(2, max_pending=3) as pool:
        for i in range(7):
            pool.submit_batch([(_slow_write, tmp_path / f"{i}.txt", ("x",))])
            assert len(pool._pending) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.txt" for i in range(7)]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_runs_in_order_and_a_failure_names_its_own_file(tmp_path, workers):
    """submit_batch: one job per frame; the files before the failing one are written, the ones after are not."""
    (tmp_path / "b.txt").mkdir()  # writing onto a folder fails (IsADirectoryError)
    with pytest.raises(OodsegError, match="^" + re.escape(f"{tmp_path / 'b.txt'}: writing failed (IsADirectoryError")):
        with WriterPool(workers, max_pending=1) as pool:
            pool.submit_batch([(_slow_write, tmp_path / f"{name}.txt", (name,)) for name in "abc"])
            pool.drain()
    assert (tmp_path / "a.txt").read_text() == "a" and not (tmp_path / "c.txt").exists()


def _slow_write(path, text):
    time.sleep(0.05)
    Path(path).write_text(text)


@pytest.mark.parametrize("workers, frames, expected", [(0, 5, 0), (3, 5, 3), (16, 5, 5)])
def test_workers_are_clamped_to_the_frames(workers, frames, expected):
    assert resolve_workers(workers, frames) == expected


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 0), (3, 0), (4, 2), (8, 4), (64, 8)])
def test_default_workers_are_half_the_cores_and_inline_below_four(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert resolve_workers(None, 100) == expected
    assert resolve_workers(None, 1) == min(expected, 1)


def test_negative_workers_are_one_line(checkpoint, tmp_path, rng):
    images = make_frames(tmp_path / "imgs", rng, 2)
    result = run_score(*score_args(checkpoint, images, tmp_path / "out", "--workers", -1))
    assert result.exit_code == 2 and result.output.strip() == "error: --workers: must be >= 0 (0 = inline), got -1"
    assert not (tmp_path / "out").exists() or not files_of(tmp_path / "out")


def test_more_workers_than_frames_and_zero_workers_score_everything(checkpoint, tmp_path, rng):
    images = make_frames(tmp_path / "imgs", rng, 2)
    many = run_score(*score_args(checkpoint, images, tmp_path / "many", "--workers", 32))
    assert many.exit_code == 0, many.output
    assert len(files_of(tmp_path / "many")) == 2 * (len(METHODS) + 1)


def test_autocast_only_for_logits_scores():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    logits_only = [get_score(m) for m in METHODS] + [get_score("densehybrid")]
    assert autocast_dtype("fp32", cuda, logits_only) is None
    assert autocast_dtype("auto", cpu, logits_only) is None
    assert autocast_dtype("bf16", cpu, logits_only) is torch.bfloat16
    assert autocast_dtype("fp16", cuda, logits_only) is torch.float16
    for name in ("odin", "pgn", "n_energy_cw", "feature_norm", "mc_dropout"):
        mixed = logits_only + [get_score(name)]
        assert autocast_dtype("auto", cuda, mixed) is None  # auto falls back to fp32
        with pytest.raises(OodsegError, match=rf"^precision: bf16 is only for scores computed from the logits; {name}"):
            autocast_dtype("bf16", cuda, mixed)
    with pytest.raises(OodsegError, match="^precision: expected one of"):
        autocast_dtype("int8", cpu, logits_only)


def test_pinned_non_blocking_channels_last_only_on_cuda(monkeypatch):
    frames = [torch.randint(0, 256, (6, 8, 3), dtype=torch.uint8) for _ in range(2)]
    batch = to_model_input(frames, torch.device("cpu"))
    reference = torch.stack([f.permute(2, 0, 1).float() / 255 for f in frames])
    assert torch.equal(batch, reference) and batch.is_contiguous()
    calls = []

    def fake_to(self, device, non_blocking=False):  # what a CUDA copy is asked for, recorded on CPU
        calls.append((str(device), non_blocking, self.is_pinned() if torch.cuda.is_available() else "n/a"))
        return self

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    cuda_batch = to_model_input(frames, torch.device("cuda"))
    assert calls[-1][:2] == ("cuda", True)
    assert cuda_batch.is_contiguous(memory_format=torch.channels_last)
    to_model_input(frames, torch.device("cpu"))
    assert calls[-1][:2] == ("cpu", False)


def test_bf16_forward_keeps_logits_scores_close_to_fp32(checkpoint, tmp_path, rng):
    """CPU autocast (bf16) through the whole command: msp/entropy within 0.03 of the fp32 maps (both in [0, 1])."""
    import h5py

    images = make_frames(tmp_path / "imgs", rng, 3, sizes=((40, 56),))
    for precision in ("fp32", "bf16"):
        result = run_score("score", "--checkpoint", str(checkpoint), "--images", str(images), "--method", "msp",
                           "--method", "entropy", "--out", str(tmp_path / precision), "--precision", precision,
                           "--workers", 0)
        assert result.exit_code == 0, result.output
    for method in ("msp", "entropy"):
        for fid in ("f000", "f001", "f002"):
            maps = []
            for precision in ("fp32", "bf16"):
                with h5py.File(tmp_path / precision / method / "imgs" / f"{fid}.hdf5") as f:
                    maps.append(f["value"][:])
            assert np.abs(maps[0] - maps[1]).max() < 0.03
            assert not np.array_equal(maps[0], maps[1])  # the forward did run in bf16
    result = run_score("score", "--checkpoint", str(checkpoint), "--images", str(images), "--method", "msp",
                       "--out", str(tmp_path / "fp32"), "--precision", "bf16")
    assert result.exit_code == 2 and "precision differ" in result.output  # no resuming across precisions


def test_channels_last_prediction_is_the_plain_argmax():
    """predict() = argmax over classes of the upsampled logits, first class on ties (torch's plain NCHW argmax)."""
    logits = torch.randn(2, 5, 7, 9)
    logits[:, 3] = logits[:, 1]  # exact ties: class 1 wins
    logits[0, :, 0, 0] = 0.0  # all classes tied: class 0
    for align in (False, True):
        expected = F.interpolate(logits, size=(13, 20), mode="bilinear", align_corners=align).argmax(1)
        assert torch.equal(predict(logits, (13, 20), align), expected.to(torch.uint8))
    assert predict(logits, (7, 9), False)[0, 0, 0] == 0 and not (predict(logits, (7, 9), False) == 3).any()
