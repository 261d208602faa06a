"""Peak memory of ``oodseg import`` on a 1.1 GB NVIDIA-style checkpoint (issue 14: within 2x the file size).

Writes a synthetic file shaped like NVIDIA's ``cityscapes_best.pth`` into a temporary folder:
``{'state_dict': 'module.' + DeepWV3Plus keys (random values) + the criterion weight, 'optimizer':
SGD state with one momentum buffer per parameter, 'epoch', 'mean_iu': numpy.float64, 'command'}``
(137 M parameters x 2 x 4 bytes = 1.1 GB), once in the legacy and once in the zip serialization.
Each is imported by ``oodseg import`` in its own subprocess, whose peak resident set size (``VmHWM``
of ``/proc/self/status``, read as it exits) is reported with the ratio to the file size. (A child's
``ru_maxrss`` is not used: Linux carries the parent's resident size over the fork into it.) The
peak of a process that only imports torch and oodseg is reported for reference.

``--quick`` uses LDN-121's keys (11 M parameters, an 88 MB file, ``--format densehybrid-ldn121``)
in the same NVIDIA layout.

    python benchmarks/import_memory.py [--quick] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from oodseg.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src"


def nvidia_style(architecture: str) -> dict:
    """NVIDIA sdcnet's checkpoint dict for ``architecture`` (19 classes), random weights and momentum."""
    with torch.device("meta"):
        model = build_model(architecture, num_classes=19)
    generator = torch.Generator().manual_seed(0)

    def filled(meta: torch.Tensor) -> torch.Tensor:
        if meta.dtype == torch.int64:
            return torch.zeros(meta.shape, dtype=torch.int64)
        return torch.empty(meta.shape, dtype=meta.dtype).normal_(generator=generator)

    state = OrderedDict((f"module.{k}", filled(v)) for k, v in model.state_dict().items())
    state["module.criterion.nll_loss.weight"] = torch.ones(19)
    params = [p for _, p in model.named_parameters()]
    optimizer = {"state": {i: {"momentum_buffer": filled(p)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 1e-3, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                   "nesterov": False, "initial_lr": 1e-3, "params": list(range(len(params)))}]}
    return {"state_dict": state, "optimizer": optimizer, "epoch": 174, "mean_iu": np.float64(0.8134),
            "command": "python train.py --dataset cityscapes --arch network.deepv3.DeepWV3Plus"}


#: Runs ``oodseg`` with argv[1:] and writes its peak resident set size (kB) to $OODSEG_PEAK_FILE at exit.
_MEASURED_OODSEG = """
import atexit, os, sys
def _write_peak():
    with open("/proc/self/status") as status:
        kilobytes = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["OODSEG_PEAK_FILE"], "w") as out:
        out.write(kilobytes)
atexit.register(_write_peak)
if sys.argv[1:]:
    from oodseg.cli import main
    main(sys.argv[1:], prog_name="oodseg")
else:
    import torch, oodseg.models.importing
"""


def peak_rss_bytes(oodseg_args: list[str], folder: Path) -> tuple[int, float]:
    """``(peak RSS in bytes, wall seconds)`` of ``oodseg *oodseg_args`` in a child process (must exit 0);
    no arguments: a process that only imports torch and the importer."""
    peak_file = folder / "peak_kb.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OODSEG_QUIET": "1", "OODSEG_PEAK_FILE": str(peak_file)}
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", _MEASURED_OODSEG, *oodseg_args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"oodseg {' '.join(oodseg_args)} failed: {process.stderr[-2000:]}")
    return int(peak_file.read_text()) * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LDN-121 keys (88 MB) instead of DeepWV3Plus (1.1 GB).")
    parser.add_argument("--keep", type=Path, default=None, help="Write the files here and keep them.")
    args = parser.parse_args()
    architecture, fmt = ("ldn121", "densehybrid-ldn121") if args.quick else ("deepwv3plus", "nvidia-wrn38")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="oodseg-import-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    baseline, _ = peak_rss_bytes([], folder)
    print(f"{architecture} in NVIDIA's checkpoint layout; a process importing torch + oodseg peaks at "
          f"{baseline / 1e6:.0f} MB")
    print(f"{'serialization':<14}{'file MB':>9}{'peak RSS MB':>13}{'ratio':>7}{'seconds':>9}")
    for legacy in (True, False):
        source = folder / f"cityscapes_best_{'legacy' if legacy else 'zip'}.pth"
        checkpoint = nvidia_style(architecture)
        torch.save(checkpoint, source, _use_new_zipfile_serialization=not legacy)
        del checkpoint
        size = source.stat().st_size
        peak, seconds = peak_rss_bytes(["import", "--format", fmt, str(source), "--out",
                                        str(folder / f"ckpt_{source.stem}"), "--overwrite"], folder)
        print(f"{'legacy' if legacy else 'zip (mmap)':<14}{size / 1e6:>9.0f}{peak / 1e6:>13.0f}{peak / size:>7.2f}"
              f"{seconds:>9.1f}", flush=True)
        if args.keep is None:
            source.unlink()
    if args.keep is None:
        shutil.rmtree(folder)
    print("ratio = peak RSS of the `oodseg import` process / file size (target <= 2)")


if __name__ == "__main__":
    main()
