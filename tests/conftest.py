"""Shared test fixtures; tests run on CPU with a fixed seed and a quiet progress bar."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OODSEG_QUIET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def run_oodseg():
    """Run the installed ``oodseg`` command, under ``torchrun --standalone`` when ``nproc > 1``; assert it succeeds."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OODSEG_QUIET": "1"}

    def run(*args, nproc: int = 1) -> subprocess.CompletedProcess:
        command = [str(bin_dir / "oodseg"), *map(str, args)]
        if nproc > 1:
            command = [str(bin_dir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "--no-python", *command]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    return run


@pytest.fixture
def kernel_built() -> None:
    """Skip a test that needs the C kernel when it is not built (fail instead under OODSEG_REQUIRE_KERNEL)."""
    from oodseg.scores import native

    if native.library() is None:
        if os.environ.get("OODSEG_REQUIRE_KERNEL"):  # make test: the build must have compiled it
            pytest.fail("the C kernel oodseg.scores._summary is not built (OODSEG_REQUIRE_KERNEL is set)")
        pytest.skip("the C kernel oodseg.scores._summary is not built")


@pytest.fixture(params=["kernel", "torch"])
def logit_path(request, monkeypatch) -> str:
    """Run a score test through the C kernel (see ``kernel_built``) and through torch alone."""
    from oodseg.scores import native

    if request.param == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    else:
        request.getfixturevalue("kernel_built")
    return request.param
