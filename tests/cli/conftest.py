"""Fixtures of the command-line tests: small images in every input format the CLI reads."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli.batch_data import blobs


def write_image_folder(folder):
    """Three images of different sizes and formats: PNG, 16-bit TIFF, RGB JPEG."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blobs((64, 80), 1)).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", blobs((96, 72), 2).astype(np.uint16) * 40)
    Image.fromarray(np.stack([blobs((50, 60), 3)] * 3, axis=-1)).save(folder / "c.jpg", quality=95)
    return folder


@pytest.fixture()
def image_folder(tmp_path):
    """A fresh folder with three images of different sizes (see :func:`write_image_folder`)."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture()
def zarr_stack(tmp_path):
    """A (3, 48, 56) uint8 zarr array chunked (1, 24, 56), and its data."""
    import zarr

    data = np.stack([blobs((48, 56), 10 + i) for i in range(3)])
    path = tmp_path / "volume.zarr"
    array = zarr.create_array(
        str(path), shape=data.shape, chunks=(1, 24, 56), dtype="uint8", zarr_format=2
    )
    array[:] = data
    return path, data
