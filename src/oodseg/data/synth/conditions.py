"""Image-level corruptions for the shifted in-distribution set (labels are unchanged)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

CONDITIONS: tuple[str, ...] = ("night", "fog", "blur", "noise")


def apply_condition(image: np.ndarray, depth: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a float32 ``(H, W, 3)`` image in 0..255 given its depth ``(H, W)`` (m); returns float32.

    ``night``: dark, blue-tinted, gamma-compressed, with a headlight cone and sensor noise;
    ``fog``: Koschmieder haze ``I·t + A·(1 - t)``, ``t = exp(-depth / visibility)``;
    ``blur``: Gaussian defocus or horizontal motion blur; ``noise``: strong Gaussian sensor noise.
    """
    h, w = depth.shape
    if condition == "night":
        dark = 255.0 * (image / 255.0) ** rng.uniform(1.6, 2.2) * rng.uniform(0.25, 0.4)
        rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        cols = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        cone = np.clip(rows * 2.0 - 1.0, 0, 1) * np.exp(-(cols / (0.3 + 0.5 * rows)) ** 2)
        lit = dark * (1.0 + 2.5 * cone[..., None]) * np.array([0.8, 0.9, 1.2], np.float32)
        return lit + rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    if condition == "fog":
        transmission = np.exp(-depth / rng.uniform(20.0, 60.0))[..., None]
        airlight = rng.uniform(185.0, 225.0)
        return image * transmission + airlight * (1.0 - transmission)
    if condition == "blur":
        if rng.random() < 0.5:
            sigma = rng.uniform(1.5, 3.0) * h / 256
            return ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest")
        length = max(3, int(rng.uniform(8, 16) * h / 256))
        return ndimage.uniform_filter1d(image, length, axis=1, mode="nearest")
    if condition == "noise":
        return image + rng.normal(0.0, rng.uniform(15.0, 28.0), image.shape).astype(np.float32)
    raise KeyError(condition)
