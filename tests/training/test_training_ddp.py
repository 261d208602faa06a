"""torchrun with 2 gloo processes gives the same parameters as one process with the same global batch.

Equality needs (documented in oodseg.workflows.train): eval-mode batch norm (``--bn frozen``),
no dropout, and the same number of loss pixels on every rank (no ignore pixels, no padding).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oodseg.models import load_checkpoint
from training_fixtures import TINY_ARCH, write_tiny_cityscapes

OODSEG = str(Path(sys.executable).with_name("oodseg"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: recipe: its extra `oodseg train` options (the mask recipe normalises its losses by the number of
#: matched masks and the class-weight total, which differ between the ranks' halves of a batch; SGD, as
#: Adam's normalised steps magnify float rounding in near-zero gradients)
MASK_ARCH = {"widths": [8, 12, 16], "hidden": 16, "queries": 6, "heads": 2, "feedforward": 16, "decoder_layers": 2}
RECIPES = {
    "baseline": [f"--arch-param={key}={json.dumps(value)}" for key, value in TINY_ARCH.items()],
    "mask-baseline": ["--recipe", "mask-baseline", "--optimizer", "sgd"]
    + [f"--arch-param={key}={json.dumps(value)}" for key, value in MASK_ARCH.items()],
}


def _train_args(data, out, recipe):
    return ["train", "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "4",
            "--crop-size", "32", "--lr", "5e-3", "--bn", "frozen", "--log-every", "1", "--json", *RECIPES[recipe]]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_two_gloo_processes_match_one_process(tmp_path, recipe):
    data = write_tiny_cityscapes(tmp_path / "data", size=(48, 64), ignore=False, outliers=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}
    single = subprocess.run([sys.executable, OODSEG, *_train_args(data, tmp_path / "single", recipe)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "--master_addr=127.0.0.1", OODSEG,
                          *_train_args(data, tmp_path / "ddp", recipe)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    a, _ = load_checkpoint(tmp_path / "single" / "checkpoint")
    b, _ = load_checkpoint(tmp_path / "ddp" / "checkpoint")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-5, rtol=0), name
    log_a = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-5)
    assert summary["val_mIoU"] == pytest.approx(json.loads((tmp_path / "single" / "train.json").read_text())["val_mIoU"],
                                                abs=1e-6)
