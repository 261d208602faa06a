"""SynthStreet scene drawing: thin classes stay learnable (minimum widths, filled wheels) at any distance."""
import numpy as np
import pytest

from oodseg.data.synth.canvas import Camera, Canvas, Paint
from oodseg.data.synth.scene import (BICYCLE, MIN_LINE_PX, MOTORCYCLE, POLE, SKY, TRAFFIC_LIGHT, TRAFFIC_SIGN,
                                     _draw_sign, _draw_street_lamp, _draw_traffic_light, _draw_two_wheeler)

CAMERA = Camera(256, 512, horizon=100.0, center_x=256.0, focal=400.0, elevation=1.5)


def _labels(draw, *args, seed: int = 0) -> np.ndarray:
    canvas = Canvas(CAMERA, Paint(SKY, (0, 0, 0)))
    draw(canvas, np.random.default_rng(seed), *args)
    return canvas.labels()


@pytest.mark.parametrize("draw", [_draw_street_lamp, _draw_sign, _draw_traffic_light])
def test_far_poles_are_at_least_min_line_px_wide(draw):
    # at 90 m a 0.12-0.25 m pole is 0.5-1.1 px: drawn at MIN_LINE_PX (2 px) or wider on every row
    args = (3.0, 90.0) if draw is _draw_sign else (3.0, 90.0, -1.0)
    pole = _labels(draw, *args) == POLE
    rows = np.flatnonzero(pole.any(1))
    assert rows.size >= 5
    shaft = rows[rows >= (rows[0] + rows[-1]) / 2]  # the lower half: shaft only (no arm, lamp head or light)
    widths = pole[shaft].sum(1)
    assert widths.min() >= MIN_LINE_PX, widths


def test_near_poles_scale_with_distance():
    widths = []
    for z in (8.0, 16.0):
        pole = _labels(_draw_street_lamp, 0.0, z, 1.0) == POLE
        ground = int(CAMERA.ground_row(z)) - 3  # a row of the shaft just above the ground
        widths.append(pole[ground].sum())
    # 0.25 m at 400/8 = 50 px/m is 12.5 px; at 16 m half of that (pinhole); PIL fills both edge
    # columns, so up to 2 px more
    assert 12 <= widths[0] <= 15 and 6 <= widths[1] <= 9


@pytest.mark.parametrize("motor, cls", [(False, BICYCLE), (True, MOTORCYCLE)])
def test_two_wheeler_wheels_are_filled_discs(motor, cls):
    z = 10.0
    labels = _labels(_draw_two_wheeler, 0.0, z, motor, False, seed=4)
    s = CAMERA.scale(z)
    u, v = CAMERA.project(0.0, 0.0, z)
    r = (0.32 if motor else 0.34) * s
    half_base = (0.7 if motor else 0.52) * s
    for cu in (u - half_base, u + half_base):  # both wheel centres (either facing) are the vehicle's class
        assert labels[int(round(v - r)), int(round(cu))] == cls
    assert {int(c) for c in np.unique(labels)} == {SKY, cls}


def test_signs_and_lights_have_a_learnable_size_at_40_m():
    # at 40 m (10 px/m here) a sign face is >= 0.75 m across and a light housing 0.45 x 1.2 m
    sign = (_labels(_draw_sign, 2.0, 40.0, seed=1) == TRAFFIC_SIGN).sum()
    light = (_labels(_draw_traffic_light, 2.0, 40.0, -1.0, seed=1) == TRAFFIC_LIGHT).sum()
    assert sign >= 0.4 * (0.75 * 10) ** 2
    assert light >= 0.9 * 0.45 * 1.2 * 100
