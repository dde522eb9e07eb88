"""Checks of SAM predictor inputs: prompts and image shapes, with errors that say what to change.

Pure numpy; :class:`~napari_segany.sam.predictor.SamPredictor` calls these before any torch work.
"""

from __future__ import annotations

import numpy as np

from napari_segany.sam import transforms

MAX_POINTS_PER_OBJECT = 1024
"""Most point prompts for one object (SAM was trained with a handful; each point is a token)."""


def validate_boxes(box: np.ndarray | None) -> np.ndarray | None:
    """(B, 4) float64 boxes as x0, y0, x1, y1 with corners ordered; None stays None."""
    if box is None:
        return None
    boxes = np.asarray(box, dtype=np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise ValueError(
            f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1; got {np.shape(box)}"
        )
    if not np.all(np.isfinite(boxes)):
        raise ValueError("box coordinates must be finite")
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1)


def validate_points(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None, batch: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(B, N, 2) float64 (x, y) coordinates and (B, N) int64 labels, repeated for ``batch`` boxes."""
    if point_coords is None:
        if point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        return None, None
    if point_labels is None:
        raise ValueError(
            "point_labels must be supplied with point_coords (1 foreground, 0 background)"
        )
    coords = np.asarray(point_coords, dtype=np.float64)
    labels = np.asarray(point_labels)
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
        raise ValueError(
            f"point_coords must have shape (N, 2) as (x, y); got {np.shape(point_coords)}"
        )
    if labels.ndim == 1:
        labels = labels[None]
    if labels.shape != coords.shape[:2]:
        raise ValueError(
            f"point_labels {np.shape(point_labels)} must give one label per point "
            f"(point_coords {np.shape(point_coords)})"
        )
    if not np.all(np.isfinite(coords)):
        raise ValueError("point coordinates must be finite")
    if coords.shape[1] > MAX_POINTS_PER_OBJECT:
        raise ValueError(
            f"{coords.shape[1]} points for one object: SAM takes at most "
            f"{MAX_POINTS_PER_OBJECT} (it was trained with a handful; each point costs "
            f"decoder time and memory). Keep a few representative points, or give a box or "
            f"a mask prompt instead"
        )
    if not ((labels == 1) | (labels == 0) | (labels == -1)).all():  # np.isin: 10x slower
        raise ValueError(
            f"point labels must be 1 (foreground) or 0 (background); got {np.unique(labels)}"
        )
    if coords.shape[0] not in (1, batch):
        raise ValueError(f"{coords.shape[0]} point sets for {batch} boxes")
    if coords.shape[0] != batch:
        coords = np.repeat(coords, batch, axis=0)
        labels = np.repeat(labels, batch, axis=0)
    return coords, labels.astype(np.int64)


def validate_mask_input(
    mask_input: np.ndarray | None, batch: int, low_res_size: tuple[int, int]
) -> np.ndarray | None:
    """(B, 1, h, w) float32 mask-prompt logits at the low-res size, repeated for ``batch`` boxes."""
    if mask_input is None:
        return None
    masks = np.asarray(mask_input, dtype=np.float32)
    size = tuple(low_res_size)
    if masks.ndim == 3:
        masks = masks[None]
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != size:
        raise ValueError(
            f"mask_input must have shape (1, {size[0]}, {size[1]}) (or (B, 1, {size[0]}, {size[1]})); "
            f"got {np.shape(mask_input)}"
        )
    if masks.shape[0] not in (1, batch):
        raise ValueError(f"{masks.shape[0]} mask inputs for {batch} boxes")
    if not np.all(np.isfinite(masks)):
        raise ValueError("mask_input must be finite logits (it holds NaN or infinity)")
    if masks.shape[0] != batch:
        masks = np.repeat(masks, batch, axis=0)
    return masks


def check_resizable(shape: tuple[int, int], image_size: int, resize: str) -> None:
    """A clear error for images too elongated to keep a side of at least one model pixel."""
    if resize == "square":
        return
    height, width = transforms.preprocess_shape(int(shape[0]), int(shape[1]), image_size)
    if height < 1 or width < 1:
        raise ValueError(
            f"an image of {shape[0]} x {shape[1]} pixels is too elongated for SAM: resized to the "
            f"model's {image_size}-pixel input its short side would be {min(height, width)} "
            f"pixels. Crop or tile it into pieces closer to square"
        )
