"""Training data from an image and a labels array: tiles around labelled objects.

Pure numpy (no torch). Each tile is a crop of at most ``tile_size`` pixels square (the model's
input size, so a tile reaches the encoder at full resolution) taken around labelled objects; an
object is trained on when at least ``min_object_pixels`` of it lie inside a tile. Images are
converted to uint8 RGB once per image, exactly as the SAM widget converts a slice before
``SamPredictor.set_image``, and then cropped, so training sees the preprocessing of inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_segany.image_conversion import to_uint8_rgb

__all__ = [
    "TrainingTile",
    "as_image_list",
    "separate_held_out",
    "tiles_from_labels",
]


@dataclass(frozen=True)
class TrainingTile:
    """One crop of an image with its labels and the objects to train on.

    Attributes
    ----------
    image
        (h, w, 3) uint8 RGB crop, h and w at most the tile size.
    labels
        (h, w) integer labels of the same crop; 0 is unlabelled.
    object_ids
        Label values of the objects to train on (at least ``min_object_pixels`` inside the crop).
    source
        Index of the image the crop comes from.
    origin
        (row, col) of the crop's top-left pixel in that image.
    """

    image: np.ndarray
    labels: np.ndarray
    object_ids: tuple[int, ...]
    source: int
    origin: tuple[int, int]


def as_image_list(
    images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalise ``images`` / ``labels`` to two equally long lists of 2D images and label arrays.

    Accepts one image ((H, W), (H, W, 3) or (H, W, 4)) with one (H, W) labels array, a (N, H, W)
    grayscale stack with (N, H, W) labels, or sequences of images and labels.

    Raises
    ------
    ValueError
        Different counts, or an image whose (H, W) differs from its labels.
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        image_list, label_list = [np.asarray(images)], [labels]
    elif isinstance(labels, np.ndarray) and labels.ndim == 3:
        image_list, label_list = list(np.asarray(images)), list(labels)
    else:
        image_list, label_list = [np.asarray(i) for i in images], [np.asarray(x) for x in labels]
    if len(image_list) != len(label_list):
        raise ValueError(f"{len(image_list)} images but {len(label_list)} label arrays")
    for index, (image, label) in enumerate(zip(image_list, label_list, strict=True)):
        if label.ndim != 2 or tuple(image.shape[:2]) != tuple(label.shape):
            raise ValueError(
                f"image {index} has shape {image.shape} but its labels {label.shape}; "
                f"labels must be (H, W) matching the image"
            )
    return image_list, label_list


def separate_held_out(
    train: Sequence[int], held_out: Sequence[int], *, gap: int = 2
) -> tuple[list[int], list[int]]:
    """Drop training slices closer than ``gap`` slices to a held-out slice.

    A gap of 2 means at least two slices lie between a training and a held-out slice
    (``|t - h| > gap``), so neighbouring, nearly identical slices never leak into the evaluation.

    Returns
    -------
    train, held_out
        Sorted slice indices; held-out slices are removed from ``train`` too.
    """
    held = sorted({int(h) for h in held_out})
    kept = sorted(int(t) for t in set(train) if all(abs(int(t) - h) > gap for h in held))
    return kept, held


def tiles_from_labels(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    tile_size: int,
    min_object_pixels: int = 25,
    max_tiles: int | None = None,
    contrast_limits: tuple[float, float] | None = None,
) -> list[TrainingTile]:
    """Cut tiles around the labelled objects of each image.

    Tiles are placed greedily: the first object (in raster order of its bounding box) not yet
    inside a tile gets a tile centred on it (shifted to stay inside the image); every object whose
    bounding box lies inside that tile counts as covered. Images smaller than ``tile_size`` give
    one tile, the whole image.

    Parameters
    ----------
    images, labels
        As :func:`as_image_list`.
    tile_size
        Side of a tile in pixels: the model's input size (``model.image_size``).
    min_object_pixels
        Objects with fewer pixels (inside a tile) are not trained on.
    max_tiles
        Keep at most this many tiles (those with most objects), or all.
    contrast_limits
        (low, high) intensities mapped to 0 and 255 for non-uint8 images; robust percentiles of
        each whole image otherwise (:func:`napari_segany.image_conversion.to_uint8_rgb`).

    Returns
    -------
    list of TrainingTile
        Tiles holding at least one object to train on.
    """
    from scipy import ndimage

    image_list, label_list = as_image_list(images, labels)
    tiles: list[TrainingTile] = []
    for source, (image, label) in enumerate(zip(image_list, label_list, strict=True)):
        label = np.asarray(label)
        if not label.any():
            continue
        rgb = to_uint8_rgb(image, contrast_limits)
        height, width = label.shape
        slices = ndimage.find_objects(label.astype(np.int64, copy=False))
        areas = np.bincount(label.ravel().astype(np.int64))
        pending = [
            (box[0].start, box[1].start, value)
            for value, box in enumerate(slices, start=1)
            if box is not None and areas[value] >= min_object_pixels
        ]
        covered: set[int] = set()
        for _, _, value in sorted(pending):
            if value in covered:
                continue
            rows, cols = slices[value - 1]
            top = _tile_start((rows.start + rows.stop) // 2, tile_size, height)
            left = _tile_start((cols.start + cols.stop) // 2, tile_size, width)
            bottom, right = min(top + tile_size, height), min(left + tile_size, width)
            crop_labels = label[top:bottom, left:right]
            counts = np.bincount(crop_labels.ravel().astype(np.int64))
            ids = tuple(int(i) for i in np.flatnonzero(counts >= min_object_pixels) if i != 0)
            for other in ids:
                r, c = slices[other - 1]
                if r.start >= top and r.stop <= bottom and c.start >= left and c.stop <= right:
                    covered.add(other)
            covered.add(value)
            if ids:
                tiles.append(
                    TrainingTile(
                        image=np.ascontiguousarray(rgb[top:bottom, left:right]),
                        labels=np.ascontiguousarray(crop_labels),
                        object_ids=ids,
                        source=source,
                        origin=(top, left),
                    )
                )
    if max_tiles is not None and len(tiles) > max_tiles:
        order = sorted(range(len(tiles)), key=lambda i: -len(tiles[i].object_ids))
        tiles = [tiles[i] for i in sorted(order[:max_tiles])]
    return tiles


def _tile_start(centre: int, tile_size: int, extent: int) -> int:
    """First pixel of a ``tile_size`` window centred on ``centre`` and kept inside ``extent``."""
    if extent <= tile_size:
        return 0
    return int(min(max(centre - tile_size // 2, 0), extent - tile_size))
