"""Anomaly and outlier objects: photo cut-outs (scikit-image sample images) and procedural shapes.

Three pairwise disjoint source sets (SPEC §2.1: training outliers never show a test anomaly;
the validation tracks hold out their own objects, so choices made on them never saw a test object):

* ``TEST_SOURCES`` — test anomalies/obstacles: the cat (``chelsea``), the ``coffee`` cup,
  the ``astronaut``, the ``rocket`` and procedural family A (crates, drums, checkered blobs).
* ``VAL_SOURCES`` — the ``anomaly_val``/``obstacle_val`` tracks: the scikit-image ``logo``
  and the ``retina`` fundus disc (segmented from their photos) and procedural family C
  (tyres, cones, sacks).
* ``OUTLIER_SOURCES`` — the OoD-training pool: crops of ``hubble_deep_field`` and
  ``immunohistochemistry``, single ``coins``, the ``horse`` silhouette and procedural
  family B (stars, rings, lattices).

Photo objects are cut out with hand-placed polygons/ellipses (or a segmentation of the
object), never as rectangles. Everything is bundled with scikit-image: no download.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from oodseg.data.synth.canvas import Sprite

TEST_SOURCES: tuple[str, ...] = (
    "photo:chelsea", "photo:coffee", "photo:astronaut", "photo:rocket",
    "novel_a:crate", "novel_a:drum", "novel_a:checker_blob",
)
VAL_SOURCES: tuple[str, ...] = (
    "photo:logo", "photo:retina", "novel_c:tyre", "novel_c:cone", "novel_c:sack",
)
OUTLIER_SOURCES: tuple[str, ...] = (
    "photo:hubble_deep_field", "photo:immunohistochemistry", "photo:coins", "photo:horse",
    "novel_b:star", "novel_b:ring", "novel_b:lattice",
)

# Outlines of the test objects in their photos: polygons (x, y) and ellipses (cx, cy, rx, ry), px.
_CUTOUTS: dict[str, dict[str, list]] = {
    "chelsea": {"polygons": [[(40, 300), (8, 200), (18, 110), (50, 30), (72, 0), (135, 30), (200, 12), (300, 18),
                              (362, 0), (388, 45), (380, 125), (405, 205), (392, 268), (350, 300)]], "ellipses": []},
    "coffee": {"polygons": [], "ellipses": [(277, 240, 200, 145), (292, 112, 120, 90), (225, 262, 28, 40)]},
    "astronaut": {"polygons": [[(95, 215), (150, 165), (305, 165), (350, 235), (362, 340), (470, 345), (511, 410),
                                (511, 511), (15, 511), (22, 330), (55, 250)]], "ellipses": [(228, 95, 72, 88)]},
    "rocket": {"polygons": [[(309, 152), (321, 127), (333, 152), (337, 392), (352, 406), (287, 406), (304, 392)],
                            [(265, 402), (385, 402), (385, 426), (265, 426)]], "ellipses": []},
}


def _skimage_image(name: str) -> np.ndarray:
    from skimage import data  # noqa: PLC0415  (heavy import, only when photos are used)

    return np.asarray(getattr(data, name)())


@lru_cache(maxsize=None)
def _photo_cutout(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The outlined object of a test photo: rgb uint8 ``(h, w, 3)`` and mask bool ``(h, w)``, cropped to the mask."""
    photo = _skimage_image(name)
    outline = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
    draw = ImageDraw.Draw(outline)
    for poly in _CUTOUTS[name]["polygons"]:
        draw.polygon(poly, fill=255)
    for cx, cy, rx, ry in _CUTOUTS[name]["ellipses"]:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = np.asarray(outline) > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return photo[box], mask[box]


@lru_cache(maxsize=None)
def _segmented_cutout(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The largest object of a photo on a plain background (``logo`` on white, ``retina`` on black),
    rgb uint8 ``(h, w, 3)`` and mask bool ``(h, w)``, cropped to the mask."""
    photo = _skimage_image(name)[..., :3]
    foreground = photo.min(axis=-1) < 235 if name == "logo" else photo.mean(axis=-1) > 20
    labels, _ = ndimage.label(ndimage.binary_fill_holes(foreground))
    mask = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return photo[box], mask[box]


@lru_cache(maxsize=None)
def _coin_cutouts() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Every coin of ``skimage.data.coins`` segmented by a smoothed threshold: ((gray, mask), ...)."""
    gray = _skimage_image("coins")
    smooth = ndimage.gaussian_filter(gray.astype(np.float32), 2.0)
    labels, n = ndimage.label(ndimage.binary_fill_holes(ndimage.binary_opening(smooth > 105, iterations=2)))
    coins = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == k
        round_enough = 0.75 < mask.shape[0] / mask.shape[1] < 1.33 and mask.mean() > 0.6
        if mask.sum() > 600 and round_enough:
            coins.append((gray[box], ndimage.binary_fill_holes(mask)))
    return tuple(coins)


def _blob_mask(rng: np.random.Generator, h: int, w: int, wobble: float = 0.18) -> np.ndarray:
    """An irregular star-convex blob filling an ``h``×``w`` box, bool ``(h, w)``."""
    theta = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += wobble / k * rng.uniform(0.5, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius /= radius.max()
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(list(zip((0.5 + 0.5 * radius * np.cos(theta)) * (w - 1),
                                         (0.5 + 0.5 * radius * np.sin(theta)) * (h - 1))), fill=255)
    return np.asarray(img) > 0


def _resize(rgb: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    size = (max(1, width), max(1, height))
    return (np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0)


def _photo(name: str, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if name in _CUTOUTS:
        rgb, mask = _photo_cutout(name)
    elif name in ("logo", "retina"):
        rgb, mask = _segmented_cutout(name)
    elif name == "coins":
        coins = _coin_cutouts()
        gray, mask = coins[int(rng.integers(len(coins)))]
        tint = np.array([(1.0, 0.85, 0.5), (0.95, 0.95, 1.0), (0.9, 0.6, 0.4)][int(rng.integers(3))])
        rgb = np.clip(gray[..., None] * tint * 1.2, 0, 255).astype(np.uint8)
    elif name == "horse":
        mask = ~_skimage_image("horse")
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        coat = np.array([(120, 80, 45), (60, 45, 35), (200, 190, 170), (150, 110, 70)][int(rng.integers(4))], np.float32)
        shade = 1.0 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 4.0) * 4.0
        rgb = np.clip(coat * shade[..., None], 0, 255).astype(np.uint8)
    else:  # texture photos: an irregular blob cut at a random place
        photo = _skimage_image(name)
        side = int(rng.uniform(0.2, 0.45) * min(photo.shape[:2]))
        y0, x0 = (int(rng.integers(0, photo.shape[i] - side)) for i in (0, 1))
        rgb = photo[y0:y0 + side, x0:x0 + int(side * rng.uniform(0.7, 1.3))]
        mask = _blob_mask(rng, *rgb.shape[:2])
    width = int(round(height * mask.shape[1] / mask.shape[0] * rng.uniform(0.9, 1.1)))
    rgb, mask = _resize(rgb, mask, height, width)
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    gain = rng.uniform(0.8, 1.15, size=3)
    return np.clip(rgb * gain, 0, 255).astype(np.uint8), mask


def _vivid(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    rgb = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return (60 + 190 * rgb).astype(np.float64)


def _procedural(kind: str, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a procedural object of ``height`` px on a transparent canvas."""
    if kind in ("tyre", "cone"):  # family C; families A and B keep their exact random draws below
        aspect = rng.uniform(0.85, 1.0) if kind == "tyre" else rng.uniform(0.5, 0.65)
    else:
        aspect = {"crate": rng.uniform(1.0, 1.6), "drum": rng.uniform(0.55, 0.75)}.get(kind, rng.uniform(0.7, 1.4))
    h, w = max(height, 4), max(int(round(height * aspect)), 4)
    rgb_img = Image.new("RGB", (w, h), (0, 0, 0))
    mask_img = Image.new("L", (w, h), 0)
    draw, mdraw = ImageDraw.Draw(rgb_img), ImageDraw.Draw(mask_img)

    def fill(shape: str, coords, colour, **kw) -> None:
        getattr(draw, shape)(coords, fill=tuple(int(c) for c in np.clip(colour, 0, 255)), **kw)
        getattr(mdraw, shape)(coords, fill=255, **kw)

    if kind == "crate":  # a box in three-quarter view with tape
        colour = np.array([(190, 140, 80), (150, 100, 55), (60, 90, 160), (200, 200, 190)][int(rng.integers(4))], float)
        top, side = 0.25 * h, 0.3 * w
        fill("polygon", [(0, top), (w - side, top), (w - side, h - 1), (0, h - 1)], colour)
        fill("polygon", [(w - side, top), (w - 1, 0), (w - 1, h - 1 - top), (w - side, h - 1)], colour * 0.7)
        fill("polygon", [(0, top), (side, 0), (w - 1, 0), (w - side, top)], colour * 1.2)
        tape = np.array([(220, 200, 120), (200, 40, 40), (240, 240, 240)][int(rng.integers(3))], float)
        mid = (w - side) / 2
        fill("polygon", [(mid - 0.05 * w, top), (mid + 0.05 * w, top), (mid + 0.05 * w, h - 1), (mid - 0.05 * w, h - 1)], tape)
    elif kind == "drum":  # a cylinder with bands
        colour = _vivid(rng)
        cap = 0.12 * h
        fill("rectangle", [0, cap / 2, w - 1, h - 1 - cap / 2], colour)
        fill("ellipse", [0, h - 1 - cap, w - 1, h - 1], colour * 0.8)
        for k in range(1, 4):
            y = cap / 2 + k * (h - cap) / 4
            fill("rectangle", [0, y - 0.025 * h, w - 1, y + 0.025 * h], colour * 0.6)
        fill("ellipse", [0, 0, w - 1, cap], colour * 1.25)
    elif kind == "checker_blob":
        mask = _blob_mask(rng, h, w, wobble=0.35)
        cell = max(2, int(h / rng.uniform(3, 7)))
        yy, xx = np.mgrid[:h, :w]
        pattern = ((yy // cell + xx // cell) % 2).astype(bool)
        rgb = np.where(pattern[..., None], _vivid(rng), _vivid(rng) * 0.4)
        return _finish(rgb, mask, rng)
    elif kind == "star":
        points = int(rng.integers(5, 9))
        a = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, np.pi)
        r = np.where(np.arange(2 * points) % 2 == 0, 0.5, rng.uniform(0.2, 0.35))
        yy, xx = np.mgrid[:h, :w]
        dist = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)[..., None]
        mdraw.polygon(list(zip(w / 2 + r * np.cos(a) * (w - 1), h / 2 + r * np.sin(a) * (h - 1))), fill=255)
        rgb = _vivid(rng) * (1 - 1.2 * dist) + _vivid(rng) * 1.2 * dist
        return _finish(rgb, np.asarray(mask_img) > 0, rng)
    elif kind == "ring":
        thickness = rng.uniform(0.15, 0.3)
        yy, xx = np.mgrid[:h, :w]
        ny, nx = (yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5
        radius = np.hypot(ny, nx)
        mask = (radius <= 0.5) & (radius >= 0.5 - thickness)
        stripes = (np.floor((np.arctan2(ny, nx) + np.pi) / (2 * np.pi) * int(rng.integers(6, 14))) % 2).astype(bool)
        rgb = np.where(stripes[..., None], _vivid(rng), _vivid(rng))
        return _finish(rgb, mask, rng)
    elif kind == "lattice":
        cells = int(rng.integers(3, 6))
        colour = _vivid(rng)
        for i in range(cells):
            for j in range(cells):
                if rng.random() < 0.8:
                    x0, y0 = j * w / cells, i * h / cells
                    fill("rounded_rectangle", [x0 + 0.1 * w / cells, y0 + 0.1 * h / cells, x0 + 0.9 * w / cells,
                                               y0 + 0.9 * h / cells], colour * rng.uniform(0.6, 1.2), radius=max(1, int(0.2 * h / cells)))
    elif kind == "tyre":  # a tyre seen from the side: dark tread ring, grey rim, treads as spokes of shade
        yy, xx = np.mgrid[:h, :w]
        ny, nx = (yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5
        radius, angle = np.hypot(ny, nx), np.arctan2(ny, nx)
        mask = radius <= 0.5
        tread = 1.0 + 0.25 * (np.cos(angle * int(rng.integers(18, 30))) > 0)
        rim = np.array([(150, 150, 155), (190, 185, 170), (90, 90, 95)][int(rng.integers(3))], float)
        rgb = np.where((radius < rng.uniform(0.22, 0.3))[..., None], rim, (25 * tread)[..., None] * np.ones(3))
        return _finish(rgb, mask, rng)
    elif kind == "cone":  # a striped cone on a square foot
        colour = _vivid(rng)
        foot = 0.1 * h
        fill("polygon", [(0.42 * w, 0), (0.58 * w, 0), (0.85 * w, h - 1 - foot), (0.15 * w, h - 1 - foot)], colour)
        for k in (1, 2):
            y0, y1 = k * 0.28 * h, k * 0.28 * h + 0.1 * h
            fill("polygon", [(0.5 * w - (0.08 + 0.35 * y0 / h) * w, y0), (0.5 * w + (0.08 + 0.35 * y0 / h) * w, y0),
                             (0.5 * w + (0.08 + 0.35 * y1 / h) * w, y1), (0.5 * w - (0.08 + 0.35 * y1 / h) * w, y1)],
                 (235, 235, 235))
        fill("rectangle", [0, h - 1 - foot, w - 1, h - 1], colour * 0.5)
    elif kind == "sack":  # a lumpy bag with folds
        mask = _blob_mask(rng, h, w, wobble=0.45)
        base = np.array([(200, 180, 130), (90, 110, 70), (230, 230, 225), (60, 60, 70)][int(rng.integers(4))], float)
        folds = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(1.0, h / 12))
        rgb = base * (1.0 + 2.5 * folds / (np.abs(folds).max() + 1e-6) * 0.2)[..., None]
        return _finish(rgb, mask, rng)
    else:
        raise KeyError(kind)
    return _finish(np.asarray(rgb_img, dtype=np.float64), np.asarray(mask_img) > 0, rng)


def _finish(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add surface noise, clip to uint8 and black out everything outside ``mask``."""
    rgb = rgb * (1.0 + 0.06 * rng.standard_normal(mask.shape))[..., None]
    return np.where(mask[..., None], np.clip(rgb, 0, 255), 0).astype(np.uint8), mask


def make_sprite(source: str, height: int, rng: np.random.Generator) -> Sprite:
    """A cut-out of ``source`` (``"photo:NAME"`` or ``"novel_{a,b,c}:KIND"``) about ``height`` px tall.

    Pixels outside the mask are black; the mask has at least one pixel.
    """
    family, _, name = source.partition(":")
    height = max(int(round(height)), 4)
    if family == "photo":
        rgb, mask = _photo(name, height, rng)
        rgb = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    else:
        rgb, mask = _procedural(name, height, rng)
    if not mask.any():  # degenerate tiny outline: keep the centre pixel
        mask = np.zeros_like(mask)
        mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
    return Sprite(np.ascontiguousarray(rgb), np.ascontiguousarray(mask), source)
