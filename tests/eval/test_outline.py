"""Outline measures of a mask (asyncvid.eval.outline): hull area, largest part, fill, solidity, top share."""

import numpy as np
import pytest

from asyncvid.eval.outline import hull_area, largest_component, outline


def test_hull_area_of_known_point_sets():
    assert hull_area(np.array([(0, 0), (4, 0), (4, 3), (0, 3), (2, 1), (1, 2)])) == 12.0  # inner points ignored
    assert hull_area(np.array([(0, 0), (4, 0), (0, 4)])) == 8.0
    assert hull_area(np.array([(0, 0), (1, 1), (2, 2)])) == 0.0  # collinear
    assert hull_area(np.array([(1, 1)])) == 0.0


def test_largest_component_keeps_only_the_biggest_4_connected_part():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[6:9, 5:9] = True  # 12 pixels
    mask[4, 4] = True  # touches the first block only diagonally: its own part
    kept = largest_component(mask)
    assert kept.sum() == 12 and kept[6:9, 5:9].all() and not kept[1:4, 1:4].any()
    assert not largest_component(np.zeros((4, 4), bool)).any()


def test_outline_of_a_square_a_disc_and_a_triangle():
    square = np.zeros((20, 20), bool)
    square[5:15, 3:13] = True
    assert outline(square) == (1.0, 1.0, 0.5)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    disc = np.hypot(xx - 32, yy - 32) <= 20
    fill, solidity, top = outline(disc)
    # the hull of a pixelated disc takes in the outer corners of its edge pixels: a little over pi/4
    assert np.pi / 4 < fill < 0.84 and solidity > 0.95 and top == pytest.approx(0.5, abs=0.01)
    triangle = (yy <= 52) & (2 * np.abs(xx - 32) <= yy - 12)  # apex up, base as wide as it is tall
    fill, solidity, top = outline(triangle)
    assert fill == pytest.approx(0.5, abs=0.04) and solidity > 0.9 and top == pytest.approx(0.25, abs=0.02)
    noisy = square.copy()
    noisy[0, 19] = True  # a stray pixel far away does not stretch the hull
    assert outline(noisy) == (1.0, 1.0, 0.5)
    assert all(np.isnan(outline(np.zeros((5, 5), bool))))
