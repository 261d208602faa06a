"""Shared test fixtures; tests run on CPU with a fixed seed and a quiet progress bar."""
import os

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
