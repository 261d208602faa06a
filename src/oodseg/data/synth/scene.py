"""Procedural street scenes in perspective: layout sampling and drawing of the Cityscapes classes.

A scene is a straight street seen from a car: road (lanes, markings, crosswalks) and
sidewalks converging to the vanishing point, building facades with windows, walls,
fences and hedges along the building lines, and standing things (vehicles, people,
riders, poles, signs, traffic lights, trees) sized by their depth. Drawing order is
back to front (painter's algorithm), so labels respect occlusion exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from oodseg.data.synth.canvas import DEPTH_GROUND, DEPTH_PLANE_X, FAR, VOID, Camera, Canvas, Paint
from oodseg.data.synth.textures import BLOTCH, CLOUDS, FINE, FOLIAGE, HSTREAK, VSTREAK

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN,
 SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

#: Tracks change the scene statistics: obstacle frames keep the road ahead clearer.
TRACKS = ("id", "anomaly", "obstacle")


@dataclass(frozen=True)
class Layout:
    """Where things are (metres): road edges, outer sidewalk edges and building lines as
    ``(left, right)`` x positions, lane width and count, depth ``end`` of the street."""

    camera: Camera
    road: tuple[float, float]
    sidewalk: tuple[float, float]
    facade: tuple[float, float]
    lane_width: float
    lanes: int
    end: float
    track: str


@dataclass(frozen=True)
class Item:
    """Something standing on the ground at ``depth`` (m); ``draw(canvas)`` paints it."""

    depth: float
    draw: Callable[[Canvas], None]


def sample_layout(rng: np.random.Generator, size: tuple[int, int], track: str = "id") -> Layout:
    """A random street layout for an image of ``size`` = (H, W) px."""
    h, w = size
    horizon = h * rng.uniform(0.34, 0.46)
    elevation = rng.uniform(1.3, 1.7)
    focal = (h - horizon) * rng.uniform(3.6, 5.0) / elevation
    camera = Camera(h, w, horizon, w * rng.uniform(0.44, 0.56), focal, elevation)
    lanes = int(rng.integers(2, 5))
    lane_width = rng.uniform(2.9, 3.6)
    own_lane = int(rng.integers(lanes // 2, lanes))
    left = -lane_width * (own_lane + rng.uniform(0.35, 0.65))
    right = left + lanes * lane_width
    walk = rng.uniform(2.0, 4.5, size=2)
    verge = np.where(rng.random(2) < 0.35, rng.uniform(1.0, 4.0, size=2), 0.0)
    return Layout(camera, (left, right), (left - walk[0], right + walk[1]),
                  (left - walk[0] - verge[0], right + walk[1] + verge[1]), lane_width, lanes,
                  rng.uniform(80.0, 180.0), track)


# ----------------------------------------------------------------------------- colours


def _colour(rng: np.random.Generator, choices, jitter: float = 12.0) -> np.ndarray:
    base = np.asarray(choices[int(rng.integers(len(choices)))], dtype=np.float64)
    return base + rng.normal(0.0, jitter, 3)


SKY_COLOURS = ((118, 165, 225), (150, 185, 230), (214, 220, 230), (228, 230, 234), (185, 195, 225))  # overcast skies brighter than facades
ROAD_COLOURS = ((84, 84, 88), (100, 98, 96), (70, 72, 78), (112, 110, 108))
SIDEWALK_COLOURS = ((160, 155, 150), (176, 162, 140), (140, 140, 145), (168, 120, 110), (190, 185, 172))
BUILDING_COLOURS = ((150, 120, 100), (185, 172, 150), (122, 122, 128), (196, 166, 122), (142, 88, 70),
                    (205, 202, 194), (160, 150, 170), (120, 105, 90))
WALL_COLOURS = ((165, 162, 150), (140, 136, 128), (175, 160, 130), (120, 118, 112))
FENCE_COLOURS = ((95, 100, 95), (120, 95, 70), (70, 90, 70), (150, 150, 150))
VEGETATION_COLOURS = ((62, 112, 46), (48, 95, 40), (85, 125, 55), (70, 105, 70))
TERRAIN_COLOURS = ((125, 135, 75), (140, 125, 85), (110, 140, 80), (150, 140, 100))
POLE_COLOURS = ((80, 82, 86), (125, 128, 130), (60, 70, 62), (105, 100, 95))
CAR_COLOURS = ((215, 215, 212), (30, 30, 34), (150, 152, 158), (160, 30, 30), (40, 60, 130), (90, 90, 95),
               (200, 180, 60), (60, 100, 70), (120, 40, 50))
# trucks and buses, and riders and pedestrians, differ in colour families as well as in shape,
# so a small network can tell them apart from local evidence
TRUCK_COLOURS = ((225, 225, 220), (200, 110, 40), (190, 190, 185), (140, 120, 95))
BUS_COLOURS = ((200, 40, 40), (230, 190, 40), (40, 120, 170), (60, 150, 90))
#: high-visibility jackets of cyclists and motorcyclists
RIDER_COLOURS = ((235, 220, 40), (245, 130, 30), (40, 170, 230), (225, 40, 90), (170, 230, 60))
CLOTHES_COLOURS = ((40, 40, 45), (200, 40, 40), (40, 70, 150), (230, 230, 230), (120, 100, 70), (60, 120, 60),
                   (220, 180, 50), (150, 60, 140), (100, 100, 105))
SKIN_COLOURS = ((230, 190, 160), (200, 150, 110), (140, 95, 65), (90, 60, 45))
SIGN_COLOURS = ((200, 30, 35), (30, 80, 170), (240, 240, 235), (240, 200, 30), (30, 120, 70))


# ----------------------------------------------------------------------------- ground and buildings


def _ground_strip(canvas: Canvas, paint: int, x0: float, x1: float, z0: float, z1: float) -> None:
    u, v = canvas.camera.project([x0, x1, x1, x0], 0.0, [z0, z0, z1, z1])
    canvas.polygon(paint, u, v)


def _draw_ground(canvas: Canvas, layout: Layout, rng: np.random.Generator) -> None:
    """Terrain, verges, sidewalks with curbs, road with markings, patches and crosswalk."""
    cam, end = canvas.camera, layout.end
    (rl, rr), (sl, sr) = layout.road, layout.sidewalk
    terrain = canvas.paint(TERRAIN, _colour(rng, TERRAIN_COLOURS), FINE, 0.22, depth_kind=DEPTH_GROUND)
    top = cam.ground_row(end)
    canvas.polygon(terrain, [-10, cam.width + 10, cam.width + 10, -10], [top, top, cam.height + 10, cam.height + 10])
    walk = canvas.paint(SIDEWALK, _colour(rng, SIDEWALK_COLOURS), HSTREAK, 0.12, depth_kind=DEPTH_GROUND)
    curb = canvas.paint(SIDEWALK, _colour(rng, ((190, 190, 188), (150, 150, 150))), FINE, 0.05, depth_kind=DEPTH_GROUND)
    _ground_strip(canvas, walk, sl, rl, 0.3, end)
    _ground_strip(canvas, walk, rr, sr, 0.3, end)
    _ground_strip(canvas, curb, rl - 0.3, rl, 0.3, end)
    _ground_strip(canvas, curb, rr, rr + 0.3, 0.3, end)
    asphalt = _colour(rng, ROAD_COLOURS, 6.0)
    road = canvas.paint(ROAD, asphalt, FINE, 0.12, depth_kind=DEPTH_GROUND)
    _ground_strip(canvas, road, rl, rr, 0.3, end)
    for _ in range(int(rng.integers(0, 4))):
        patch = canvas.paint(ROAD, asphalt * rng.uniform(0.8, 1.15), BLOTCH, 0.1, depth_kind=DEPTH_GROUND)
        x0, z0 = rng.uniform(rl, rr - 1.0), rng.uniform(4.0, 40.0)
        _ground_strip(canvas, patch, x0, min(x0 + rng.uniform(1.0, 4.0), rr), z0, z0 + rng.uniform(2.0, 12.0))
    marking = canvas.paint(ROAD, _colour(rng, ((225, 225, 220), (215, 205, 185)), 6.0), FINE, 0.05, depth_kind=DEPTH_GROUND)
    lw, period = layout.lane_width, rng.uniform(9.0, 13.0)
    phase = rng.uniform(0.0, period)
    for k in range(1, layout.lanes):
        x = rl + k * lw
        for z in np.arange(phase, min(end, 90.0), period):
            _ground_strip(canvas, marking, x - 0.08, x + 0.08, z, z + 3.0)
    if rng.random() < 0.6:
        for x in (rl + 0.25, rr - 0.25):
            _ground_strip(canvas, marking, x - 0.08, x + 0.08, 0.3, end)
    if rng.random() < 0.3:
        z = rng.uniform(9.0, 28.0)
        for x in np.arange(rl + 0.5, rr - 0.5, 1.1):
            _ground_strip(canvas, marking, x, x + 0.55, z, z + 3.5)


def _vertical_quad(cam: Camera, x0, z0, x1, z1, y0: float, y1: float):
    """Image polygon of the vertical rectangle between ground points (x0,z0)-(x1,z1), heights y0..y1."""
    return cam.project([x0, x1, x1, x0], [y0, y0, y1, y1], [z0, z1, z1, z0])


def _draw_building(canvas: Canvas, rng: np.random.Generator, x: float, z0: float, z1: float, height: float) -> None:
    """A block whose facade lies in the plane ``x`` from depth ``z0`` to ``z1``, with its front face and windows."""
    cam, side = canvas.camera, np.sign(x)
    colour = _colour(rng, BUILDING_COLOURS)
    texture = (BLOTCH, HSTREAK, VSTREAK)[int(rng.integers(3))]
    front = canvas.paint(BUILDING, colour * 0.82, texture, 0.1, depth=z0)
    canvas.polygon(front, *_vertical_quad(cam, x, z0, x + side * 25.0, z0, 0.0, height))
    face = canvas.paint(BUILDING, colour, texture, 0.1, depth=x, depth_kind=DEPTH_PLANE_X)
    canvas.polygon(face, *_vertical_quad(cam, x, z0, x, z1, 0.0, height))
    if rng.random() < 0.5:  # shop front / base storey band
        base = canvas.paint(BUILDING, _colour(rng, BUILDING_COLOURS) * 0.7, FINE, 0.08, depth=x, depth_kind=DEPTH_PLANE_X)
        canvas.polygon(base, *_vertical_quad(cam, x, z0, x, z1, 0.0, rng.uniform(2.5, 3.5)))
    glass = canvas.paint(BUILDING, _colour(rng, ((45, 55, 75), (70, 80, 95), (120, 135, 150)), 8.0), FINE, 0.06,
                         depth=x, depth_kind=DEPTH_PLANE_X)
    floor, bay = rng.uniform(2.9, 3.6), rng.uniform(2.4, 4.0)
    win_w, win_h = bay * rng.uniform(0.35, 0.6), floor * rng.uniform(0.4, 0.6)
    zc = np.arange(z0 + bay * 0.75, z1 - bay * 0.5, bay)
    yb = np.arange(floor + 0.9, height - win_h - 0.4, floor)
    if len(zc) == 0 or len(yb) == 0:
        return
    zz, yy = np.meshgrid(zc, yb)
    zz, yy = zz.ravel(), yy.ravel()
    u0, v0 = cam.project(x, yy, zz - win_w / 2)
    u1, v1 = cam.project(x, yy + win_h, zz + win_w / 2)
    us = np.stack([u0, cam.project(x, yy, zz + win_w / 2)[0], u1, cam.project(x, yy + win_h, zz - win_w / 2)[0]], 1)
    vs = np.stack([v0, cam.project(x, yy, zz + win_w / 2)[1], v1, cam.project(x, yy + win_h, zz - win_w / 2)[1]], 1)
    keep = (np.abs(us[:, 1] - us[:, 0]) >= 1.5) & (us.max(1) > 0) & (us.min(1) < cam.width) & (vs.max(1) > 0)
    for u, v in zip(us[keep], vs[keep]):
        canvas.polygon(glass, u, v)


def _draw_low_structure(canvas: Canvas, rng: np.random.Generator, kind: int, x: float, z0: float, z1: float) -> None:
    """A wall, fence or hedge in the plane ``x`` from ``z0`` to ``z1``."""
    cam = canvas.camera
    if kind == WALL:
        paint = canvas.paint(WALL, _colour(rng, WALL_COLOURS), BLOTCH, 0.28, depth=x, depth_kind=DEPTH_PLANE_X)
        height = rng.uniform(1.2, 2.8)
    elif kind == FENCE:
        paint = canvas.paint(FENCE, _colour(rng, FENCE_COLOURS), VSTREAK, 0.4, depth=x, depth_kind=DEPTH_PLANE_X)
        height = rng.uniform(1.0, 2.0)
    else:
        paint = canvas.paint(VEGETATION, _colour(rng, VEGETATION_COLOURS), FOLIAGE, 0.35, depth=x, depth_kind=DEPTH_PLANE_X)
        height = rng.uniform(1.0, 2.4)
    front = canvas.paint(kind, np.asarray(canvas.paints[paint].rgb) * 0.85, canvas.paints[paint].texture,
                         canvas.paints[paint].amplitude, depth=z0)
    canvas.polygon(front, *_vertical_quad(cam, x, z0, x + np.sign(x) * 0.3, z0, 0.0, height))
    canvas.polygon(paint, *_vertical_quad(cam, x, z0, x, z1, 0.0, height))
    if kind == WALL:  # mortar courses every ~0.4 m and coping stones along the top
        rgb = np.asarray(canvas.paints[paint].rgb)
        mortar = canvas.paint(WALL, rgb * 0.7, FINE, 0.05, depth=x, depth_kind=DEPTH_PLANE_X)
        for y in np.arange(rng.uniform(0.3, 0.45), height - 0.3, rng.uniform(0.35, 0.45)):
            canvas.polygon(mortar, *_vertical_quad(cam, x, z0, x, z1, y - 0.03, y + 0.03))
        coping = canvas.paint(WALL, rgb * 0.6, FINE, 0.1, depth=x, depth_kind=DEPTH_PLANE_X)
        canvas.polygon(coping, *_vertical_quad(cam, x, z0, x, z1, height - 0.2, height))


def _draw_tree(canvas: Canvas, rng: np.random.Generator, x: float, z: float, height: float) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    trunk = canvas.paint(VEGETATION, _colour(rng, ((85, 65, 45), (70, 60, 50))), VSTREAK, 0.2, depth=z)
    u, v = cam.project(x, 0.0, z)
    canvas.polygon(trunk, [u - max(1.0, 0.15 * s), u + max(1.0, 0.15 * s), u + max(1.0, 0.12 * s), u - max(1.0, 0.12 * s)],
                   [v, v, v - 0.6 * height * s, v - 0.6 * height * s])
    crown = canvas.paint(VEGETATION, _colour(rng, VEGETATION_COLOURS), FOLIAGE, 0.38, depth=z)
    radius = height * rng.uniform(0.22, 0.32)
    for _ in range(int(rng.integers(3, 6))):
        cu = u + rng.normal(0.0, 0.5) * radius * s
        cv = v - (height - radius * rng.uniform(0.8, 1.3)) * s
        canvas.ellipse(crown, cu, cv, radius * s * rng.uniform(0.7, 1.1), radius * s * rng.uniform(0.7, 1.0))


def _draw_building_lines(canvas: Canvas, layout: Layout, rng: np.random.Generator) -> None:
    """Both sides of the street: blocks with facades, or walls/fences/hedges with trees and houses behind."""
    cam = canvas.camera
    far_paint = canvas.paint(BUILDING, _colour(rng, BUILDING_COLOURS) * 0.9, BLOTCH, 0.08, depth=layout.end)
    x = -80.0
    while x < 80.0:  # the far end of the street
        width, height = rng.uniform(8.0, 25.0), rng.uniform(8.0, 30.0)
        canvas.polygon(far_paint, *_vertical_quad(cam, x, layout.end, x + width, layout.end, 0.0, height))
        x += width
    structures: list[tuple[float, Callable[[], None]]] = []
    for side, facade in ((-1.0, layout.facade[0]), (1.0, layout.facade[1])):
        z = 0.5
        while z < layout.end:
            length = rng.uniform(12.0, 45.0)
            z1 = min(z + length, layout.end)
            kind = rng.choice(["building", "building", "building", "low"])
            if kind == "building":
                height = rng.uniform(8.0, 26.0)
                structures.append((z, lambda f=facade, a=z, b=z1, h=height, r=rng.spawn(1)[0]: _draw_building(canvas, r, f, a, b, h)))
            else:
                back = facade + side * rng.uniform(6.0, 18.0)
                if rng.random() < 0.6:
                    _draw_building(canvas, rng, back, z, z1, rng.uniform(7.0, 20.0))
                for zt in np.arange(z + rng.uniform(1, 6), z1, rng.uniform(5.0, 10.0)):
                    _draw_tree(canvas, rng, facade + side * rng.uniform(1.5, 5.0), zt, rng.uniform(5.0, 10.0))
                low = int(rng.choice([WALL, FENCE, VEGETATION]))
                structures.append((z, lambda f=facade, a=z, b=z1, k=low, r=rng.spawn(1)[0]: _draw_low_structure(canvas, r, k, f, a, b)))
            z = z1 + (rng.uniform(3.0, 10.0) if rng.random() < 0.3 else 0.0)
    for _, draw in sorted(structures, key=lambda s: -s[0]):
        draw()


# ----------------------------------------------------------------------------- standing things


#: Thinnest drawn line (px): thin structures stay at least this wide, so they survive a stride-4 network.
MIN_LINE_PX = 2.0


def _line_width(s: float, metres: float) -> float:
    """Width in px of a ``metres``-wide line at ``s`` px/m, at least :data:`MIN_LINE_PX`."""
    return max(MIN_LINE_PX, metres * s)


def _draw_person(canvas: Canvas, rng: np.random.Generator, x: float, z: float, class_id: int = PERSON) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    u, v = cam.project(x, 0.0, z)
    h = rng.uniform(1.55, 1.92) * s
    pants = canvas.paint(class_id, _colour(rng, CLOTHES_COLOURS), FINE, 0.08, depth=z)
    shirt = canvas.paint(class_id, _colour(rng, CLOTHES_COLOURS), FINE, 0.1, depth=z)
    skin = canvas.paint(class_id, _colour(rng, SKIN_COLOURS, 6.0), FINE, 0.04, depth=z)
    hair = canvas.paint(class_id, _colour(rng, ((30, 25, 20), (90, 60, 30), (170, 140, 80), (120, 120, 120)), 6.0), FINE, 0.05, depth=z)
    stride = rng.uniform(-0.14, 0.14) * h
    hip = v - 0.48 * h
    canvas.line(pants, [u - 0.04 * h, u - stride], [hip, v - 0.01 * h], 0.075 * h)
    canvas.line(pants, [u + 0.04 * h, u + stride], [hip, v - 0.01 * h], 0.075 * h)
    canvas.polygon(shirt, [u - 0.1 * h, u + 0.1 * h, u + 0.13 * h, u - 0.13 * h], [hip + 0.03 * h, hip + 0.03 * h, v - 0.8 * h, v - 0.8 * h])
    for sign in (-1, 1):
        canvas.line(shirt, [u + sign * 0.13 * h, u + sign * 0.15 * h + stride * 0.4], [v - 0.78 * h, v - 0.5 * h], 0.055 * h)
    canvas.ellipse(skin, u, v - 0.875 * h, 0.06 * h, 0.075 * h)
    canvas.ellipse(hair, u, v - 0.91 * h, 0.062 * h, 0.045 * h)


def _draw_two_wheeler(canvas: Canvas, rng: np.random.Generator, x: float, z: float, motor: bool, ridden: bool) -> None:
    """A bicycle or motorcycle seen from the side (facing left or right), optionally with its rider."""
    cam = canvas.camera
    s = cam.scale(z)
    u, v = cam.project(x, 0.0, z)
    face = 1.0 if rng.random() < 0.5 else -1.0
    cls = MOTORCYCLE if motor else BICYCLE
    r = (0.32 if motor else 0.34) * s
    half_base = (0.7 if motor else 0.52) * s
    tyre = canvas.paint(cls, _colour(rng, ((25, 25, 28),), 4.0), FINE, 0.05, depth=z)
    frame = canvas.paint(cls, _colour(rng, CLOTHES_COLOURS if not motor else CAR_COLOURS), FINE, 0.06, depth=z)
    # wheel discs: spokes (bicycle) or rims (motorcycle) read as one textured grey disc at this resolution
    wheel = canvas.paint(cls, _colour(rng, ((120, 122, 125), (150, 150, 150), (95, 95, 100)), 8.0), VSTREAK,
                         0.35 if not motor else 0.12, depth=z)
    back, front = (u - face * half_base, v - r), (u + face * half_base, v - r)
    seat = (u - face * 0.18 * s, v - (0.78 if motor else 0.88) * s)
    bar = (u + face * 0.42 * s, v - 1.0 * s)
    for cu, cv in (back, front):
        canvas.ellipse(wheel, cu, cv, r, r)
        canvas.ring(tyre, cu, cv, r, r, _line_width(s, 0.1 if motor else 0.07))
    if motor:
        canvas.polygon(frame, [back[0], u - face * 0.35 * s, u + face * 0.5 * s, front[0], u + face * 0.1 * s],
                       [back[1], seat[1], v - 0.95 * s, front[1], v - 0.25 * s])
        canvas.ellipse(tyre, u, v - 0.35 * s, 0.28 * s, 0.16 * s)
    else:
        crank = (u, v - 0.3 * s)
        canvas.line(frame, [back[0], seat[0], bar[0], front[0]], [back[1], seat[1], bar[1], front[1]], _line_width(s, 0.08))
        canvas.line(frame, [back[0], crank[0], seat[0]], [back[1], crank[1], seat[1]], _line_width(s, 0.08))
        canvas.line(frame, [crank[0], bar[0] - face * 0.05 * s], [crank[1], bar[1] + 0.12 * s], _line_width(s, 0.08))
    if not ridden:
        return
    clothes = canvas.paint(RIDER, _colour(rng, RIDER_COLOURS), FINE, 0.08, depth=z - 0.01)
    legs = canvas.paint(RIDER, _colour(rng, CLOTHES_COLOURS), FINE, 0.08, depth=z - 0.01)
    head = canvas.paint(RIDER, _colour(rng, SKIN_COLOURS + ((40, 40, 45), (220, 220, 220)), 6.0), FINE, 0.05, depth=z - 0.01)
    shoulder = (u + face * 0.05 * s, v - 1.5 * s)
    canvas.line(legs, [seat[0], u + face * 0.08 * s, u + face * 0.02 * s], [seat[1], v - 0.6 * s, v - 0.22 * s], _line_width(s, 0.14))
    canvas.line(clothes, [seat[0], shoulder[0]], [seat[1] - 0.05 * s, shoulder[1]], _line_width(s, 0.32))
    canvas.line(clothes, [shoulder[0], bar[0]], [shoulder[1] + 0.05 * s, bar[1]], _line_width(s, 0.09))
    canvas.ellipse(head, shoulder[0] + face * 0.05 * s, shoulder[1] - 0.17 * s, 0.12 * s, 0.13 * s)


def _draw_pole(canvas: Canvas, paint: int, x: float, z: float, y_top: float, width: float) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    u, v = cam.project(x, 0.0, z)
    half = 0.5 * _line_width(s, width)
    top = v - y_top * s
    canvas.polygon(paint, [u - half, u + half, u + half, u - half], [v, v, top, top])


def _draw_street_lamp(canvas: Canvas, rng: np.random.Generator, x: float, z: float, towards: float) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    pole = canvas.paint(POLE, _colour(rng, POLE_COLOURS, 6.0), FINE, 0.06, depth=z)
    height = rng.uniform(6.0, 8.5)
    _draw_pole(canvas, pole, x, z, height, 0.25)
    u, v = cam.project(x, height, z)
    tip = u + towards * 1.6 * s
    canvas.line(pole, [u, tip], [v, v + 0.2 * s], _line_width(s, 0.12))
    canvas.ellipse(pole, tip, v + 0.25 * s, 0.35 * s, 0.12 * s)


def _draw_sign(canvas: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    pole = canvas.paint(POLE, _colour(rng, POLE_COLOURS, 6.0), FINE, 0.06, depth=z)
    height = rng.uniform(2.2, 3.0)
    _draw_pole(canvas, pole, x, z, height, 0.12)
    u, v = cam.project(x, height, z)
    size = rng.uniform(0.75, 1.05) * s
    shape = int(rng.integers(5))
    outer = canvas.paint(TRAFFIC_SIGN, _colour(rng, SIGN_COLOURS, 8.0), FINE, 0.05, depth=z - 0.01)
    inner = canvas.paint(TRAFFIC_SIGN, _colour(rng, SIGN_COLOURS, 8.0), FINE, 0.05, depth=z - 0.01)
    if shape == 0:  # round
        canvas.ellipse(outer, u, v, size / 2, size / 2)
        canvas.ellipse(inner, u, v, size * 0.36, size * 0.36)
    elif shape == 1:  # triangle
        canvas.polygon(outer, [u - size / 2, u + size / 2, u], [v + size * 0.4, v + size * 0.4, v - size * 0.5])
        canvas.polygon(inner, [u - size * 0.3, u + size * 0.3, u], [v + size * 0.27, v + size * 0.27, v - size * 0.22])
    elif shape == 2:  # square
        canvas.polygon(outer, [u - size / 2, u + size / 2, u + size / 2, u - size / 2], [v - size / 2, v - size / 2, v + size / 2, v + size / 2])
        canvas.polygon(inner, [u - size * 0.15, u + size * 0.15, u + size * 0.15, u - size * 0.15], [v - size * 0.3, v - size * 0.3, v + size * 0.3, v + size * 0.3])
    elif shape == 3:  # octagon
        a = np.pi / 8 + np.arange(8) * np.pi / 4
        canvas.polygon(outer, u + size / 2 * np.cos(a), v + size / 2 * np.sin(a))
    else:  # street-name board
        canvas.polygon(outer, [u - size, u + size * 0.4, u + size * 0.4, u - size], [v - size * 0.25, v - size * 0.25, v + size * 0.25, v + size * 0.25])


def _draw_traffic_light(canvas: Canvas, rng: np.random.Generator, x: float, z: float, towards: float) -> None:
    cam = canvas.camera
    s = cam.scale(z)
    pole = canvas.paint(POLE, _colour(rng, POLE_COLOURS, 6.0), FINE, 0.06, depth=z)
    overhead = rng.random() < 0.4
    height = rng.uniform(5.5, 6.5) if overhead else rng.uniform(2.4, 3.0)
    _draw_pole(canvas, pole, x, z, height, 0.18)
    u, v = cam.project(x, height, z)
    if overhead:
        reach = rng.uniform(2.5, 5.0) * s
        canvas.line(pole, [u, u + towards * reach], [v, v], _line_width(s, 0.14))
        u, v = u + towards * reach, v + 1.1 * s
    housing = canvas.paint(TRAFFIC_LIGHT, _colour(rng, ((30, 32, 30), (40, 45, 40), (170, 150, 40)), 6.0), FINE, 0.05, depth=z - 0.01)
    w, h = 0.45 * s, 1.2 * s
    canvas.polygon(housing, [u - w / 2, u + w / 2, u + w / 2, u - w / 2], [v - h, v - h, v, v])
    lit = int(rng.integers(3))
    for k, colour in enumerate(((230, 40, 30), (240, 180, 30), (40, 220, 90))):
        lamp = canvas.paint(TRAFFIC_LIGHT, np.asarray(colour) * (1.0 if k == lit else 0.3), FINE, 0.03, depth=z - 0.01)
        canvas.ellipse(lamp, u, v - h * (0.83 - 0.33 * k), 0.15 * s, 0.15 * s)


def _draw_vehicle(canvas: Canvas, rng: np.random.Generator, cls: int, x: float, z: float, oncoming: bool) -> None:
    """A car, truck or bus as a box: visible side face, then the rear (or front) face at depth ``z``."""
    cam = canvas.camera
    width, length, height = {CAR: (rng.uniform(1.7, 1.95), rng.uniform(4.0, 4.9), rng.uniform(1.4, 1.65)),
                             TRUCK: (2.45, rng.uniform(6.5, 9.0), rng.uniform(3.0, 3.8)),
                             BUS: (2.5, rng.uniform(10.5, 12.5), rng.uniform(3.0, 3.3))}[cls]
    body_rgb = _colour(rng, {CAR: CAR_COLOURS, TRUCK: TRUCK_COLOURS, BUS: BUS_COLOURS}[cls])
    body = canvas.paint(cls, body_rgb, BLOTCH, 0.06, depth=z)
    side_body = canvas.paint(cls, body_rgb * 0.8, BLOTCH, 0.06, depth=z)
    glass = canvas.paint(cls, _colour(rng, ((30, 35, 45), (55, 65, 80)), 6.0), FINE, 0.05, depth=z)
    tyre = canvas.paint(cls, (22, 22, 24), FINE, 0.05, depth=z)
    left, right = x - width / 2, x + width / 2
    shadow = canvas.paint(ROAD, (35, 35, 38), FINE, 0.08, depth_kind=DEPTH_GROUND)
    _ground_strip(canvas, shadow, left - 0.15, right + 0.15, z - 0.2, z + length)
    if abs(x) > width / 2:  # the side facing the camera axis is visible
        xs = left if x > 0 else right
        wheel_r = 0.34 if cls == CAR else 0.5
        for zw in (z + 0.8, z + length - 0.9):
            (ua, va), (ub, vb) = [cam.project(xs, wheel_r, zw + d) for d in (-wheel_r, wheel_r)]
            canvas.ellipse(tyre, (ua + ub) / 2, (va + vb) / 2, abs(ua - ub) / 2, wheel_r * cam.scale(zw))
        if cls == CAR:
            canvas.polygon(side_body, *_vertical_quad(cam, xs, z, xs, z + length, 0.3, 0.95))
            cabin = cam.project([xs] * 4, [0.95, 0.95, height, height],
                                [z + 0.25 * length, z + 0.85 * length, z + 0.72 * length, z + 0.38 * length])
            canvas.polygon(side_body, *cabin)
            canvas.polygon(glass, *cam.project([xs] * 4, [1.0, 1.0, height - 0.08, height - 0.08],
                                               [z + 0.3 * length, z + 0.8 * length, z + 0.7 * length, z + 0.4 * length]))
        elif cls == TRUCK:
            canvas.polygon(side_body, *_vertical_quad(cam, xs, z, xs, z + 0.74 * length, 0.9, height))
            _hazard_band(canvas, rng, [xs, xs], [z, z + 0.74 * length], 0.55, 0.85, depth=z)
            cab = canvas.paint(cls, _colour(rng, TRUCK_COLOURS) * 0.85, BLOTCH, 0.06, depth=z)
            canvas.polygon(cab, *_vertical_quad(cam, xs, z + 0.76 * length, xs, z + length, 0.5, 2.9))
            canvas.polygon(glass, *_vertical_quad(cam, xs, z + 0.82 * length, xs, z + length - 0.2, 1.8, 2.7))
        else:
            canvas.polygon(side_body, *_vertical_quad(cam, xs, z, xs, z + length, 0.35, height))
            canvas.polygon(glass, *_vertical_quad(cam, xs, z + 0.5, xs, z + length - 0.5, 1.3, height - 0.5))
    # rear (or front) face, nearest to the camera
    for xt in (left + 0.3, right - 0.3):
        canvas.polygon(tyre, *_vertical_quad(cam, xt - 0.15, z, xt + 0.15, z, 0.0, 0.55))
    lamp = canvas.paint(cls, (230, 225, 200) if oncoming else (200, 30, 30), FINE, 0.03, depth=z)
    if cls == CAR:
        canvas.polygon(body, *_vertical_quad(cam, left, z, right, z, 0.3, 0.95))
        canvas.polygon(body, *cam.project([left, right, right - 0.2, left + 0.2], [0.95, 0.95, height, height], z))
        canvas.polygon(glass, *cam.project([left + 0.12, right - 0.12, right - 0.25, left + 0.25],
                                           [1.0, 1.0, height - 0.07, height - 0.07], z))
        lamp_y = (0.7, 0.85)
    else:
        canvas.polygon(body, *_vertical_quad(cam, left, z, right, z, 0.35 if cls == BUS else 0.9, height))
        if cls == BUS or oncoming:
            canvas.polygon(glass, *_vertical_quad(cam, left + 0.15, z, right - 0.15, z, height * 0.55, height - 0.2))
        if cls == TRUCK and oncoming:  # a truck's front: a dark grille with chrome bars
            grille = canvas.paint(cls, (35, 36, 40), FINE, 0.04, depth=z)
            metal = canvas.paint(cls, _colour(rng, ((175, 178, 182),), 6.0), FINE, 0.04, depth=z)
            canvas.polygon(grille, *_vertical_quad(cam, x - 0.7, z, x + 0.7, z, 1.0, 1.7))
            for yb in (1.15, 1.35, 1.55):
                canvas.polygon(metal, *_vertical_quad(cam, x - 0.65, z, x + 0.65, z, yb - 0.04, yb + 0.04))
        elif cls == TRUCK:  # its rear: two doors with locking bars above a red-and-white underrun guard
            stripe = canvas.paint(cls, body_rgb * 0.65, FINE, 0.05, depth=z)
            canvas.polygon(stripe, *_vertical_quad(cam, x - 0.03, z, x + 0.03, z, 1.0, height - 0.1))
            metal = canvas.paint(cls, _colour(rng, ((165, 168, 172), (120, 122, 126)), 6.0), FINE, 0.04, depth=z)
            for xb in np.linspace(left + 0.3, right - 0.3, 4):
                canvas.polygon(metal, *_vertical_quad(cam, xb - 0.04, z, xb + 0.04, z, 1.0, height - 0.15))
            _hazard_band(canvas, rng, [left, right], [z, z], 0.4, 0.7, depth=z)
        lamp_y = (0.5, 0.7) if cls == BUS else (0.95, 1.1)
    for x0 in (left + 0.08, right - 0.38):
        canvas.polygon(lamp, *_vertical_quad(cam, x0, z, x0 + 0.3, z, *lamp_y))
    plate = canvas.paint(cls, (225, 225, 220), FINE, 0.02, depth=z)
    py = lamp_y[0] - 0.25
    canvas.polygon(plate, *_vertical_quad(cam, x - 0.25, z, x + 0.25, z, py, py + 0.12))


def _hazard_band(canvas: Canvas, rng: np.random.Generator, xs, zs, y0: float, y1: float, depth: float) -> None:
    """A truck's underrun guard from ``(xs[0], zs[0])`` to ``(xs[1], zs[1])`` between heights ``y0..y1``
    (metres): alternating red and white panels, about 0.35 m each."""
    cam = canvas.camera
    n = max(2, int(round(np.hypot(xs[1] - xs[0], zs[1] - zs[0]) / 0.35)))
    panels = [canvas.paint(TRUCK, _colour(rng, (rgb,), 6.0), FINE, 0.03, depth=depth)
              for rgb in ((205, 35, 35), (235, 235, 230))]
    t = np.linspace(0.0, 1.0, n + 1)
    px, pz = xs[0] + t * (xs[1] - xs[0]), zs[0] + t * (zs[1] - zs[0])
    for k in range(n):
        canvas.polygon(panels[k % 2], *_vertical_quad(cam, px[k], pz[k], px[k + 1], pz[k + 1], y0, y1))


def _spaced(rng: np.random.Generator, n: int, lo: float, hi: float, gap: float) -> np.ndarray:
    """Up to ``n`` sorted positions in [lo, hi) at least ``gap`` apart."""
    picks = np.sort(rng.uniform(lo, hi, size=n))
    kept: list[float] = []
    for p in picks:
        if not kept or p - kept[-1] >= gap:
            kept.append(p)
    return np.asarray(kept)


def street_items(layout: Layout, rng: np.random.Generator) -> list[Item]:
    """Vehicles, people, riders, poles, signs, traffic lights and trees between the building lines."""
    (rl, rr), (sl, sr), lw = layout.road, layout.sidewalk, layout.lane_width
    items: list[Item] = []

    def add(depth: float, draw: Callable[..., None], *args) -> None:
        seed = int(rng.integers(2 ** 63))  # a seed, not a generator: drawing twice gives the same pixels
        items.append(Item(float(depth), lambda canvas: draw(canvas, np.random.default_rng(seed), *args)))

    clear_road = layout.track == "obstacle"
    for lane in range(layout.lanes):
        x = rl + (lane + 0.5) * lw + rng.normal(0.0, 0.15)
        oncoming = lane < layout.lanes // 2
        count = int(rng.integers(0, 2 if clear_road else 3))
        for z in _spaced(rng, count, 30.0 if clear_road else 7.0, 80.0, 14.0):
            cls = CAR if rng.random() < 0.72 else (TRUCK if rng.random() < 0.5 else BUS)
            add(z, _draw_vehicle, cls, x, z, oncoming)
    for side, edge in ((-1.0, rl), (1.0, rr)):  # parked cars, cyclists, motorcyclists at the road edge
        if rng.random() < 0.5:
            for z in _spaced(rng, int(rng.integers(1, 5)), 5.0, 70.0, 6.0):
                add(z, _draw_vehicle, CAR if rng.random() < 0.85 else TRUCK, edge - side * 1.1, z, side < 0)
        if rng.random() < 0.8:
            z = rng.uniform(7.0, 35.0)
            add(z, _draw_two_wheeler, edge - side * 0.8, z, rng.random() < 0.5, True)
    walk_x = {-1.0: (sl + 0.4, rl - 0.6), 1.0: (rr + 0.6, sr - 0.4)}
    for side in (-1.0, 1.0):
        lo, hi = walk_x[side]
        for z in rng.uniform(5.0, 45.0, size=int(rng.integers(1, 8))):
            add(z, _draw_person, rng.uniform(lo, hi), z)
        for z in rng.uniform(6.0, 40.0, size=int(rng.integers(0, 3))):
            add(z, _draw_two_wheeler, rng.uniform(lo, hi), z, rng.random() < 0.35, False)
        curb_x = rl - 0.5 if side < 0 else rr + 0.5
        if rng.random() < 0.6:
            for z in np.arange(rng.uniform(4.0, 20.0), 100.0, rng.uniform(18.0, 30.0)):
                add(z, _draw_street_lamp, curb_x, z, -side)
        for z in rng.uniform(6.0, 45.0, size=int(rng.integers(0, 4))):
            add(z, _draw_sign, curb_x + side * rng.uniform(0.0, 0.4), z)
        if rng.random() < 0.4:
            for z in np.arange(rng.uniform(5.0, 12.0), 70.0, rng.uniform(9.0, 15.0)):
                add(z, _draw_tree, rng.uniform(lo, hi) * 0.5 + (sl if side < 0 else sr) * 0.5, z, rng.uniform(4.5, 8.0))
    if rng.random() < 0.75:
        z = rng.uniform(12.0, 40.0)
        for side, edge in ((-1.0, rl - 0.6), (1.0, rr + 0.6)):
            if rng.random() < 0.8:
                add(z, _draw_traffic_light, edge, z, -side)
        if not clear_road:
            for x in rng.uniform(rl + 0.5, rr - 0.5, size=int(rng.integers(0, 4))):
                add(z + rng.uniform(-1.0, 3.0), _draw_person, x, z + 1.5)
    return items


def _draw_hood(canvas: Canvas, rng: np.random.Generator) -> None:
    """The ego vehicle's bonnet at the bottom of the image (void, as in Cityscapes)."""
    cam = canvas.camera
    hood = canvas.paint(VOID, _colour(rng, CAR_COLOURS) * 0.7, BLOTCH, 0.06, depth=1.0)
    height = cam.height * rng.uniform(0.05, 0.1)
    t = np.linspace(-1.0, 1.0, 33)
    u = cam.center_x + t * cam.width * 0.75
    v = cam.height - height * (1.0 - 0.6 * t ** 2)
    canvas.polygon(hood, np.r_[u, u[-1], u[0]], np.r_[v, cam.height + 2, cam.height + 2])


def sky_paint(rng: np.random.Generator) -> Paint:
    """The background paint: sky with clouds."""
    return Paint(SKY, tuple(_colour(rng, SKY_COLOURS, 8.0)), CLOUDS, rng.uniform(0.04, 0.12), FAR)


def draw_scene(canvas: Canvas, layout: Layout, items: list[Item], rng: np.random.Generator) -> None:
    """Paint ground, building lines and all ``items`` back to front (plus, sometimes, the ego hood)."""
    _draw_ground(canvas, layout, rng)
    _draw_building_lines(canvas, layout, rng)
    for item in sorted(items, key=lambda it: -it.depth):
        item.draw(canvas)
    if rng.random() < 0.3:
        _draw_hood(canvas, rng)
