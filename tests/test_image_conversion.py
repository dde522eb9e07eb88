"""to_uint8_rgb: every image a napari user may hold becomes the models' 8-bit RGB."""

import numpy as np
import pytest

from napari_segany.image_conversion import rescale_to_uint8, to_uint8_rgb


def test_uint8_rgb_passes_through_unchanged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_rgb(image), image)


def test_grayscale_and_single_channel_are_repeated_to_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_uint8_rgb(gray)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(to_uint8_rgb(gray[..., None]), out)


def test_rgba_drops_alpha():
    image = np.zeros((2, 2, 4), np.uint8)
    image[..., 0], image[..., 3] = 10, 200
    out = to_uint8_rgb(image)
    assert out.shape == (2, 2, 3)
    assert (out[..., 0] == 10).all() and (out[..., 1:] == 0).all()


def test_contrast_limits_drive_the_scaling():
    image = np.array([[100, 150, 200, 1000]], dtype=np.uint16)
    out = to_uint8_rgb(image, contrast_limits=(100, 200))[..., 0]
    np.testing.assert_array_equal(out, [[0, 128, 255, 255]])


def test_other_dtypes_use_robust_percentiles():
    image = np.linspace(0, 60000, 1000, dtype=np.float64).reshape(10, 100).astype(np.uint16)
    image[0, 0] = 65535  # a hot pixel must not squash the rest
    out = to_uint8_rgb(image)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert 100 < np.median(out) < 155


def test_unit_range_floats_and_booleans():
    np.testing.assert_array_equal(
        to_uint8_rgb(np.array([[0.0, 0.5, 1.0]]))[..., 0], [[0, 128, 255]]
    )
    np.testing.assert_array_equal(to_uint8_rgb(np.array([[True, False]]))[..., 0], [[255, 0]])


def test_nan_becomes_zero():
    image = np.array([[np.nan, 0.0, 10.0]])
    out = rescale_to_uint8(image, 0, 10)
    np.testing.assert_array_equal(out, [[0, 0, 255]])


@pytest.mark.parametrize("shape", [(4,), (2, 3, 2), (2, 3, 5), (1, 2, 3, 3)])
def test_wrong_shapes_name_the_accepted_layouts(shape):
    with pytest.raises(ValueError, match=r"\(H, W\) grayscale"):
        to_uint8_rgb(np.zeros(shape, np.uint8))


def test_empty_and_non_numeric_images_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        to_uint8_rgb(np.zeros((0, 3), np.uint8))
    with pytest.raises(ValueError, match="not numeric"):
        to_uint8_rgb(np.array([["a", "b"]]))
