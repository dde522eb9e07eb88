"""napari (row, col) ↔ SAM (x, y): the single conversion function and its box twin."""

import numpy as np
import pytest

from napari_segany.sam.coordinates import corners_to_sam_box, rowcol_to_xy, xy_to_rowcol


def test_rowcol_to_xy_swaps_axes_and_moves_to_pixel_centres():
    points = np.array([[2.0, 5.0], [0.0, 0.0], [10.0, 3.0]])
    xy = rowcol_to_xy(points)
    np.testing.assert_allclose(xy, [[5.5, 2.5], [0.5, 0.5], [3.5, 10.5]])


def test_round_trip_keeps_leading_axes():
    rng = np.random.default_rng(0)
    points = rng.uniform(-5, 100, size=(3, 4, 2))
    xy = rowcol_to_xy(points)
    assert xy.shape == (3, 4, 2)
    np.testing.assert_allclose(xy_to_rowcol(xy), points)


def test_pixel_centre_scales_to_the_centre_of_the_resized_pixel():
    # SAM resizes coordinates by new/old: the centre of column j (x = j + 0.5) must land on the
    # centre of the block of resized pixels column j becomes.
    width, new_width = 256, 1024
    col = 37
    x = rowcol_to_xy(np.array([[0.0, col]]))[0, 0] * new_width / width
    block = new_width // width
    assert x == pytest.approx(col * block + block / 2)


def test_box_from_rectangle_around_whole_pixels_is_their_edges():
    r0, r1, c0, c1 = 3, 7, 10, 20
    corners = np.array(
        [[r0 - 0.5, c0 - 0.5], [r0 - 0.5, c1 + 0.5], [r1 + 0.5, c1 + 0.5], [r1 + 0.5, c0 - 0.5]]
    )
    np.testing.assert_allclose(corners_to_sam_box(corners), [c0, r0, c1 + 1, r1 + 1])
    # vertex order does not matter
    np.testing.assert_allclose(corners_to_sam_box(corners[::-1]), [c0, r0, c1 + 1, r1 + 1])


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        rowcol_to_xy(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        xy_to_rowcol(np.zeros(3))
    with pytest.raises(ValueError):
        corners_to_sam_box(np.zeros((1, 2)))
