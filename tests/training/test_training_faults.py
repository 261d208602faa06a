"""`train` under faults: full disk at every file it writes, read-only or blocked output folders, Ctrl-C.
Each fault gives one line, keeps the last trainer state and every complete log line, and a resumed run
ends equal to an uninterrupted one."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import oodseg.workflows.train as train_module
from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.models import load_checkpoint
from oodseg.training import make_config
from oodseg.workflows.train import STATE_FILE, train
from training_fixtures import TINY_ARCH, write_tiny_cityscapes

STEPS = dict(steps=4, batch_size=2, crop_size=32, log_every=1, ckpt_every=2, lr=5e-3, warmup_steps=0, validate=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_cityscapes(tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted run: (final weights, log records without timings)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(_config(data, out))
    return load_checkpoint(out / "checkpoint")[0].state_dict(), _log(out)


def _config(data, out, **overrides):
    return make_config("baseline", data=str(data), out=str(out), arch_params=TINY_ARCH, **{**STEPS, **overrides})


def _log(out: Path) -> list[dict]:
    text = (out / "log.jsonl").read_text()
    assert text == "" or text.endswith("\n")  # only whole lines
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]


def _no_temporary_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".partial" in p.name]


def _resume_equals_straight(data, out, straight) -> None:
    summary = train(_config(data, out, resume=True))
    assert summary["steps"] == 4
    weights, log = straight
    resumed = load_checkpoint(out / "checkpoint")[0].state_dict()
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert _log(out) == log


def _full_disk(after: int):
    """A writer that succeeds ``after`` times, then writes a few bytes and fails with ENOSPC."""
    calls = []

    def write(real):
        def fake(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)
        return fake
    return write


def test_full_disk_at_the_trainer_state_keeps_the_previous_state_and_the_log(data, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def save(state, path, *args, **kwargs):  # the second trainer state (step 4) hits a full disk half-way
        if state["step"] == 4:
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OodsegError) as error:
        train(_config(data, out))
    message = str(error.value)
    assert "\n" not in message and message.startswith("out: cannot write ")
    assert "No space left on device" in message and "trainer state of step 2 is kept" in message
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert _no_temporary_files(out)
    monkeypatch.setattr(torch, "save", real_save)
    _resume_equals_straight(data, out, straight)


@pytest.mark.parametrize("target", ["checkpoint", "log"])
def test_full_disk_at_the_checkpoint_or_a_log_line_keeps_the_complete_files(data, straight, tmp_path, monkeypatch,
                                                                             target):
    out = tmp_path / "run"
    if target == "checkpoint":  # the second checkpoint's weights file fails: the step-2 checkpoint stays whole
        import oodseg.models.checkpoint as checkpoint_module

        monkeypatch.setattr(checkpoint_module, "save_file", _full_disk(after=1)(checkpoint_module.save_file))
    else:  # the third log line is cut short by a full disk: the file keeps lines 1 and 2 only

        class HalfWrite:
            def __init__(self, file):
                self.file = file

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, text):
                if json.loads(text)["step"] == 3:
                    self.file.write(text[: len(text) // 2])
                    self.file.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.file.write(text)

        monkeypatch.setattr(train_module, "open", lambda *a, **k: HalfWrite(open(*a, **k)), raising=False)
    with pytest.raises(OodsegError, match="No space left on device.*trainer state of step 2 is kept"):
        train(_config(data, out))
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
    assert load_checkpoint(out / "checkpoint")[1]["step"] == 2  # loads: weights and model.json agree
    assert [r["step"] for r in _log(out)] == ([1, 2, 3, 4] if target == "checkpoint" else [1, 2])
    assert _no_temporary_files(out)
    monkeypatch.undo()
    _resume_equals_straight(data, out, straight)


def test_a_crash_mid_line_is_dropped_on_resume(data, straight, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, out), callback=lambda step, record: (_ for _ in ()).throw(KeyboardInterrupt)
              if step == 3 else None)
    with open(out / "log.jsonl", "a") as log:  # a kill -9 in the middle of writing line 4
        log.write('{"step": 4, "lo')
    _resume_equals_straight(data, out, straight)


def test_unwritable_output_folders_fail_in_one_line_before_training(data, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "file" / "run"),
                                       "--steps", "2", "--crop-size", "32", "--no-validate"] +
                                sum((["--arch-param", f"{k}={json.dumps(v)}"] for k, v in TINY_ARCH.items()), []))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --out: cannot write ")
    assert "no trainer state was written yet" in result.stderr

    def read_only(*args, **kwargs):  # a read-only file system (root ignores chmod, so the fault is injected)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    calls = []
    with pytest.raises(OodsegError, match=r"out: cannot write .*log.jsonl \(Read-only file system\)"):
        train(_config(data, tmp_path / "ro"), callback=lambda *a: calls.append(a))
    assert not calls  # refused before the first step


def test_ctrl_c_exits_130_in_one_line_and_leaves_a_resumable_run(data, tmp_path):
    out = tmp_path / "run"
    arch = sum((["--arch-param", f"{k}={json.dumps(v)}"] for k, v in TINY_ARCH.items()), [])
    command = [str(Path(sys.executable).parent / "oodseg"), "train", "--data", str(data), "--out", str(out),
               "--steps", "100000", "--batch-size", "2", "--crop-size", "32", "--ckpt-every", "1", "--no-validate",
               *arch]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}
    # stderr goes to a file, not a pipe: nothing the process leaves behind can hold the test on a pipe.
    # The child gets SIGINT's default disposition (a shell's background job inherits it ignored, and Python
    # then installs no KeyboardInterrupt handler), as in a terminal.
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (out / STATE_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    # Ctrl-C, repeated every 15 s as a user would if the first one was not seen (seen once in CI under load)
    for _ in range(8):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError(f"oodseg train did not stop on Ctrl-C within 120 s: {log.read_text()}")
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert stderr.startswith("interrupted: ") and stderr.count("\n") == 1, stderr
    step = torch.load(out / STATE_FILE, weights_only=True)["step"]  # the last trainer state is whole
    assert step >= 1
    # the same run through the library (the CLI's defaults), resumed for one more step
    config = make_config("baseline", data=str(data), out=str(out), arch_params=TINY_ARCH, steps=100000, batch_size=2,
                         crop_size=32, ckpt_every=1, validate=False, resume=True, time_budget=1e-3)
    assert train(config)["steps"] == step + 1
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == step + 1
