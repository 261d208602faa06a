"""Hidden temporary folders of killed runs (issue 18): ``synth`` and ``report`` build their output in a
hidden sibling folder; a run killed with SIGKILL leaves it behind, and the next run of the same kind
removes it — but never one that a live run holds (``flock`` on the folder, taken here directly).
"""
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from oodseg.atomic import atomic_directory
from oodseg.cli import main
from oodseg.data.synthetic import generate

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures" / "report"))
from synthetic import write_results  # noqa: E402
from faults import read_only_below  # noqa: E402

TINY = (64, 128)
TINY_FRAMES = "train=1,val=1,anomaly=1,obstacle=1,shifted=1,outliers=1,anomaly_val=1,obstacle_val=1"


def _left_by_a_killed_run(parent: Path, name: str) -> list[Path]:
    folders = [parent / f".{name}.partial-k1ll3d", parent / f".{name}.old-k1ll3d"]
    for folder in folders:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "half.png").write_bytes(b"half")
    return folders


def _held_by_a_live_run(parent: Path, name: str) -> tuple[Path, int]:
    folder = parent / f".{name}.partial-l1ve00"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return folder, fd


def test_atomic_directory_removes_stale_folders_and_keeps_live_ones(tmp_path):
    stale = _left_by_a_killed_run(tmp_path, "out")
    live, fd = _held_by_a_live_run(tmp_path, "out")
    unrelated = tmp_path / ".out.backup"
    unrelated.mkdir()
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "x.txt").write_text("new")
        assert (tmp_path / "out" / "x.txt").read_text() == "new"
        assert not any(p.exists() for p in stale) and live.is_dir() and unrelated.is_dir()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.backup", live.name, "out"])
    finally:
        os.close(fd)


def test_synth_removes_the_temporary_folders_of_a_killed_synth(tmp_path):
    stale = _left_by_a_killed_run(tmp_path, "syn")
    generate(tmp_path / "syn", size=TINY, frames=TINY_FRAMES, progress=False)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_report_removes_the_temporary_folders_of_a_killed_report(tmp_path):
    write_results(tmp_path / "results", methods=1, frames=1, shape=(32, 64), datasets=("anomaly",),
                  with_extras=False)
    stale = _left_by_a_killed_run(tmp_path, "rep")
    result = CliRunner().invoke(main, ["report", str(tmp_path / "results"), "--out", str(tmp_path / "rep"),
                                       "--frames", "0"])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and (tmp_path / "rep" / "index.html").is_file()


def test_report_into_a_read_only_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    write_results(tmp_path / "results", methods=1, frames=1, shape=(32, 64), datasets=("anomaly",),
                  with_extras=False)
    (tmp_path / "ro").mkdir()
    read_only_below(tmp_path / "ro", monkeypatch)
    result = CliRunner().invoke(main, ["report", str(tmp_path / "results"), "--out", str(tmp_path / "ro" / "rep"),
                                       "--frames", "0"])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {tmp_path / 'ro' / 'rep'}: Read-only file system\n"
    assert not list((tmp_path / "ro").iterdir())


@pytest.mark.slow
def test_synth_killed_with_sigkill_then_rerun_leaves_no_hidden_folder(tmp_path):
    command = [str(Path(sys.executable).parent / "oodseg"), "synth", "--out", str(tmp_path / "syn"),
               "--size", "64x128", "--frames", "train=40,val=1,anomaly=1,obstacle=1,shifted=1,outliers=1,"
               "anomaly_val=1,obstacle_val=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".syn.partial-*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".syn.partial-*")), "the run was not killed while writing"
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


KILLED_SWAP = """
import os, signal, sys
from pathlib import Path
from oodseg import atomic
target = Path(sys.argv[1])
real_replace, calls = os.replace, []
def replace(src, dst):
    calls.append(dst)
    if Path(dst) == target and len(calls) == 2:  # the old folder is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
atomic.os.replace = replace
with atomic.atomic_directory(target) as tmp:
    (tmp / "x.txt").write_text("new")
"""


def test_a_swap_killed_between_its_renames_gets_the_previous_folder_back(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as tmp:
        (tmp / "x.txt").write_text("old")
    proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(target)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists() and any(p.name.startswith(".checkpoint.old-") for p in tmp_path.iterdir())
    with atomic_directory(tmp_path / "checkpoint") as tmp:  # the next run: restores, then replaces as usual
        assert (target / "x.txt").read_text() == "old"
        (tmp / "x.txt").write_text("newer")
    assert (target / "x.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_train_resume_puts_back_a_checkpoint_folder_left_aside_by_a_killed_swap(tmp_path):
    from oodseg.workflows.train import CHECKPOINT_DIR, STATE_FILE, TrainConfig, _prepare_output

    aside = tmp_path / f".{CHECKPOINT_DIR}.old-k1ll3d" / "previous"
    aside.mkdir(parents=True)
    (aside / "model.json").write_text("{}")
    (tmp_path / STATE_FILE).write_bytes(b"state")
    _prepare_output(tmp_path, TrainConfig(data=str(tmp_path), out=str(tmp_path), resume=True))
    assert (tmp_path / CHECKPOINT_DIR / "model.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_DIR, STATE_FILE])
