"""Precomputed noise tiles that give SynthStreet surfaces their texture.

The tiles are a deterministic function of the image size (fixed internal seed), computed
once per process and cropped at a per-frame random offset, so texturing a frame costs one
gather instead of generating noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

#: Texture kinds (index into the tile stack).
FINE, BLOTCH, HSTREAK, VSTREAK, FOLIAGE, CLOUDS = range(6)
NUM_TEXTURES = 6
#: Extra rows/columns of every tile: the maximum per-frame offset.
TILE_MARGIN = 64
_TILE_SEED = 20240601


def _upsampled_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise ``(H, W)`` float32: a random grid of ``cell``-px spacing, bicubic-upsampled."""
    h, w = shape
    grid = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    big = Image.fromarray(grid, mode="F").resize((int(grid.shape[1] * cell), int(grid.shape[0] * cell)), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32)[:h, :w]


def _standardised(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)


@lru_cache(maxsize=4)
def texture_tiles(height: int, width: int) -> np.ndarray:
    """Noise tiles ``(NUM_TEXTURES, height + TILE_MARGIN, width + TILE_MARGIN)`` float32, ~zero mean, unit std.

    Scales are relative to the image height so textures look alike at every size.
    """
    rng = np.random.default_rng(_TILE_SEED)
    shape = (height + TILE_MARGIN, width + TILE_MARGIN)
    u = height / 256.0
    fine = rng.standard_normal(shape).astype(np.float32)
    octaves = sum(_upsampled_noise(rng, shape, c * u) / (i + 1) for i, c in enumerate((32.0, 12.0, 4.0)))
    blotch = _standardised(octaves + 0.3 * fine)
    rows = _upsampled_noise(rng, (shape[0], 1), 1.5 * u)
    hstreak = _standardised(np.broadcast_to(rows, shape) + 0.35 * fine)
    cols = _upsampled_noise(rng, (1, shape[1]), 1.5 * u)
    vstreak = _standardised(np.broadcast_to(cols, shape) + 0.35 * fine)
    leaves = _upsampled_noise(rng, shape, 3.0 * u) + 0.6 * _upsampled_noise(rng, shape, 10.0 * u)
    foliage = _standardised(np.sign(leaves) * np.sqrt(np.abs(leaves)) + 0.3 * fine)
    clouds = _standardised(np.maximum(_upsampled_noise(rng, shape, 60.0 * u) + 0.5 * _upsampled_noise(rng, shape, 20.0 * u), -0.3))
    return np.stack([_standardised(fine), blotch, hstreak, vstreak, foliage, clouds]).clip(-3, 3)
