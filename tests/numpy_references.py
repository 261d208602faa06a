"""Independent numpy references shared by several test folders."""
import numpy as np


def numpy_gaussian_blur(maps: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Direct 2-D convolution with the outer-product kernel, numpy 'reflect' padding (edge not repeated)."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / g.sum() ** 2
    pad = (size - 1) // 2
    out = np.zeros_like(maps, dtype=np.float64)
    for b, frame in enumerate(maps):
        padded = np.pad(frame.astype(np.float64), pad, mode="reflect")
        for i in range(frame.shape[0]):
            for j in range(frame.shape[1]):
                out[b, i, j] = (padded[i:i + size, j:j + size] * kernel).sum()
    return out
