"""A pinhole street camera and a painter's-algorithm canvas of flat-textured "paints".

Everything is drawn as polygons/ellipses into one int32 map of paint ids (PIL, no
anti-aliasing), so the label of every pixel is exactly the class of the last paint
drawn there; colours and textures are applied afterwards in one vectorised pass.
World coordinates are metres: ``x`` to the right, ``y`` up from the ground, ``z`` forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from oodseg.conventions import OUTLIER as ANOMALY  # class id of pasted anomaly/obstacle pixels (254)
from oodseg.conventions import VOID  # ignore label (Cityscapes ``ego vehicle`` and other unlabeled pixels)
from oodseg.data.synth.textures import FINE, TILE_MARGIN, texture_tiles
#: How a paint's depth is known: one value, the ground plane, or a plane ``x = const``.
DEPTH_CONST, DEPTH_GROUND, DEPTH_PLANE_X = range(3)
#: Depth given to the sky and the horizon (metres).
FAR = 1000.0


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height ``elevation`` (m) looking along +z; image ``height``×``width`` px.

    ``horizon`` is the image row of the vanishing point, ``center_x`` its column,
    ``focal`` the focal length in px.
    """

    height: int
    width: int
    horizon: float
    center_x: float
    focal: float
    elevation: float

    def project(self, x, y, z):
        """Image ``(u, v)`` (column, row; px) of world points ``(x, y, z)`` (m)."""
        z = np.maximum(np.asarray(z, dtype=np.float64), 0.3)
        return self.center_x + self.focal * np.asarray(x) / z, self.horizon + self.focal * (self.elevation - np.asarray(y)) / z

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.focal / max(z, 0.3)

    def ground_row(self, z: float) -> float:
        """Image row of the ground at depth ``z``."""
        return self.horizon + self.focal * self.elevation / max(z, 0.3)


@dataclass(frozen=True)
class Paint:
    """One flat surface: class (trainId, ``ANOMALY`` or ``VOID``), base colour (0..255),
    texture kind and amplitude, and its depth (for fog)."""

    class_id: int
    rgb: tuple[float, float, float]
    texture: int = FINE
    amplitude: float = 0.08
    depth: float = FAR
    depth_kind: int = DEPTH_CONST


@dataclass(frozen=True)
class Sprite:
    """An object cut-out: ``rgb`` uint8 ``(h, w, 3)``, ``mask`` bool ``(h, w)``, ``source`` name."""

    rgb: np.ndarray
    mask: np.ndarray
    source: str


class Canvas:
    """Painter's-algorithm canvas: later drawing calls cover earlier ones."""

    def __init__(self, camera: Camera, background: Paint):
        self.camera = camera
        self.paints: list[Paint] = [background]
        self._ids = Image.new("I", (camera.width, camera.height), 0)
        self._draw = ImageDraw.Draw(self._ids)
        self._sprites: list[tuple[int, int, int, Sprite]] = []

    def paint(self, class_id: int, rgb, texture: int = FINE, amplitude: float = 0.08,
              depth: float = FAR, depth_kind: int = DEPTH_CONST) -> int:
        """Register a paint and return its id."""
        rgb = tuple(min(max(float(c), 0.0), 255.0) for c in rgb)
        self.paints.append(Paint(int(class_id), rgb, texture, float(amplitude), float(depth), depth_kind))
        return len(self.paints) - 1

    def polygon(self, paint: int, u, v) -> None:
        """Fill the polygon with vertex columns ``u`` and rows ``v`` (px)."""
        self._draw.polygon(np.column_stack([np.ravel(u), np.ravel(v)]).ravel().tolist(), fill=paint)

    def ellipse(self, paint: int, cu: float, cv: float, ru: float, rv: float) -> None:
        """Fill the axis-aligned ellipse centred at ``(cu, cv)`` with radii ``ru``, ``rv`` (px, ≥ 0.5)."""
        ru, rv = max(ru, 0.5), max(rv, 0.5)
        self._draw.ellipse([cu - ru, cv - rv, cu + ru, cv + rv], fill=paint)

    def ring(self, paint: int, cu: float, cv: float, ru: float, rv: float, width: float) -> None:
        """Draw an elliptic ring (a wheel) of line ``width`` px (≥ 1)."""
        ru, rv = max(ru, 1.0), max(rv, 1.0)
        self._draw.ellipse([cu - ru, cv - rv, cu + ru, cv + rv], outline=paint, width=max(1, int(round(width))))

    def line(self, paint: int, u, v, width: float) -> None:
        """Draw a polyline of ``width`` px (≥ 1) through ``(u, v)``."""
        self._draw.line(np.column_stack([np.ravel(u), np.ravel(v)]).ravel().tolist(), fill=paint, width=max(1, int(round(width))), joint="curve")

    def sprite(self, sprite: Sprite, left: int, top: int, depth: float, class_id: int = ANOMALY) -> int:
        """Paste ``sprite`` with its top-left corner at ``(left, top)``; return its paint id."""
        pid = self.paint(class_id, (0, 0, 0), amplitude=0.0, depth=depth)
        mask = Image.fromarray(sprite.mask.astype(np.uint8) * 255)
        self._ids.paste(pid, (int(left), int(top), int(left) + sprite.mask.shape[1], int(top) + sprite.mask.shape[0]), mask)
        self._sprites.append((pid, int(top), int(left), sprite))
        return pid

    def paint_ids(self) -> np.ndarray:
        """The current paint-id map, int32 ``(H, W)``."""
        return np.asarray(self._ids, dtype=np.int32)

    def _table(self, attribute: str, dtype) -> np.ndarray:
        return np.array([getattr(p, attribute) for p in self.paints], dtype=dtype)

    def labels(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Class of every pixel, uint8 ``(H, W)`` (trainIds, ``ANOMALY``, ``VOID``)."""
        ids = self.paint_ids() if ids is None else ids
        return self._table("class_id", np.uint8)[ids]

    def depth(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Depth of every pixel, float32 ``(H, W)`` metres (``FAR`` for sky)."""
        ids = self.paint_ids() if ids is None else ids
        cam = self.camera
        rows = np.arange(cam.height, dtype=np.float32)[:, None] - cam.horizon
        cols = np.arange(cam.width, dtype=np.float32)[None, :] - cam.center_x
        with np.errstate(divide="ignore", invalid="ignore"):
            ground = np.where(rows > 0.5, cam.focal * cam.elevation / rows, FAR)
            plane = self._table("depth", np.float32)[ids]
            plane = np.where(cols * plane > 0, cam.focal * plane / cols, FAR)
        kind = self._table("depth_kind", np.int8)[ids]
        depth = np.where(kind == DEPTH_GROUND, ground, np.where(kind == DEPTH_PLANE_X, plane, self._table("depth", np.float32)[ids]))
        return np.minimum(depth, FAR).astype(np.float32)

    def render(self, rng: np.random.Generator, ids: np.ndarray | None = None) -> np.ndarray:
        """Textured colour image, float32 ``(H, W, 3)`` in 0..255 (before global lighting)."""
        ids = self.paint_ids() if ids is None else ids
        h, w = ids.shape
        oy, ox = rng.integers(0, TILE_MARGIN + 1, size=2)
        tiles = texture_tiles(h, w)
        _, th, tw = tiles.shape
        pixel = (np.arange(h)[:, None] * tw + np.arange(w)[None, :]) + (oy * tw + ox)
        flat = (self._table("texture", np.int64) * (th * tw))[ids] + pixel
        shade = 1.0 + self._table("amplitude", np.float32)[ids] * tiles.ravel()[flat]
        np.maximum(shade, 0.0, out=shade)
        image = self._table("rgb", np.float32)[ids] * shade[..., None]
        for pid, top, left, sprite in self._sprites:
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + sprite.mask.shape[0], h), min(left + sprite.mask.shape[1], w)
            if y0 >= y1 or x0 >= x1:
                continue
            visible = ids[y0:y1, x0:x1] == pid
            region = image[y0:y1, x0:x1]
            region[visible] = sprite.rgb[y0 - top:y1 - top, x0 - left:x1 - left][visible]
        return image
