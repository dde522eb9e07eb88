"""Where "segment everything" asks SAM: point grids, crop boxes and image tiles (numpy only).

Coordinates follow SAM: points are (x, y); boxes are ``[x0, y0, x1, y1]`` in pixels.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Evenly spaced points covering the unit square, one in the centre of each grid cell.

    Returns
    -------
    np.ndarray
        (n_per_side**2, 2) float64, (x, y) in [0, 1]; x varies fastest (row-major grid).

    Raises
    ------
    ValueError
        ``n_per_side`` below 1 (also when a crop layer's ``points_per_side / factor**i`` is).
    """
    if int(n_per_side) < 1:
        raise ValueError(
            f"points per side must be at least 1, got {n_per_side} (points_per_side, divided by "
            f"crop_n_points_downscale_factor for each crop layer)"
        )
    offset = 1.0 / (2 * n_per_side)
    one_side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One normalised point grid per crop layer; layer ``i`` has ``n_per_side / scale**i`` a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of the segment-anything crop pyramid.

    Layer 0 is the whole image; layer ``i >= 1`` has ``(2**i)**2`` crops overlapping by
    ``overlap_ratio * short_side * 2 / 2**i`` pixels.

    Parameters
    ----------
    image_size
        (H, W) of the image.
    n_layers
        Number of crop layers beyond the whole image.
    overlap_ratio
        Overlap of first-layer crops, as a fraction of the image's short side.

    Returns
    -------
    crop_boxes
        ``[x0, y0, x1, y1]`` per crop (exclusive ends), whole image first.
    layer_indices
        Crop layer of each box.
    """
    height, width = image_size
    short_side = min(height, width)
    boxes: list[list[int]] = [[0, 0, width, height]]
    layers = [0]

    def crop_length(full: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + full) / n_crops))

    for layer in range(n_layers):
        n_per_side = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_length(width, n_per_side, overlap)
        crop_h = crop_length(height, n_per_side, overlap)
        x_starts = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        for x0, y0 in product(x_starts, y_starts):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer + 1)
    return boxes, layers


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile_size`` along one axis, overlapping by at least ``overlap``.

    The last tile ends exactly at ``length``; a single tile at 0 when ``length <= tile_size``.
    """
    if tile_size <= overlap:
        raise ValueError(f"tile_size ({tile_size}) must be larger than tile_overlap ({overlap})")
    if length <= tile_size:
        return [0]
    n_tiles = math.ceil((length - overlap) / (tile_size - overlap))
    last = length - tile_size
    return [round(i * last / (n_tiles - 1)) for i in range(n_tiles)]


def generate_tiles(image_size: tuple[int, int], tile_size: int, overlap: int) -> list[list[int]]:
    """Tiles ``[x0, y0, x1, y1]`` (exclusive ends) covering an image, row by row.

    Neighbouring tiles overlap by at least ``overlap`` pixels, so that an object smaller than the
    overlap that a tile border cuts lies whole inside the neighbouring tile.
    """
    height, width = image_size
    tiles = []
    for y0 in tile_starts(height, tile_size, overlap):
        for x0 in tile_starts(width, tile_size, overlap):
            tiles.append([x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height)])
    return tiles
