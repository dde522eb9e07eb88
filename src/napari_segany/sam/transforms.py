"""Image resizing and prompt coordinate transforms between the original image and the model input.

SAM resizes the longest image side to the model input size (keeping the aspect ratio) and pads
the bottom and right; MedSAM stretches the image to a square. Prompts given in original-image
pixels follow the same scaling. Numpy functions for the public API, torch twins for batched use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) after resizing the longest side to ``long_side``, rounded like the original."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def model_input_size(
    original_size: tuple[int, int], image_size: int, resize: str
) -> tuple[int, int]:
    """(height, width) of the resized image inside the ``image_size`` square model input.

    ``resize`` is ``"longest_side"`` (SAM) or ``"square"`` (MedSAM).
    """
    if resize == "square":
        return image_size, image_size
    return preprocess_shape(original_size[0], original_size[1], image_size)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``long_side``.

    Bilinear resampling by PIL, exactly as the original ``ResizeLongestSide.apply_image`` (which
    resizes a PIL image through torchvision). Returns (h, w, 3) uint8.
    """
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (new_h, new_w) == image.shape[:2]:
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


def resize_square_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """Stretch an (H, W, 3) uint8 image to (size, size, 3) uint8 as MedSAM's preprocessing.

    ``skimage.transform.resize(order=3, preserve_range=True, anti_aliasing=True)`` followed by a
    truncating cast to uint8, as in MedSAM's inference code.
    """
    from skimage.transform import resize

    if image.shape[:2] == (size, size):
        return image
    resized = resize(
        image, (size, size, image.shape[2]), order=3, preserve_range=True, anti_aliasing=True
    )
    return resized.astype(np.uint8)


def _scale(original_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[float, float]:
    return input_size[1] / original_size[1], input_size[0] / original_size[0]


def apply_coords(
    coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """Map (..., 2) (x, y) original-image pixel coordinates to the model input frame (float64)."""
    sx, sy = _scale(original_size, input_size)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] *= sx
    coords[..., 1] *= sy
    return coords


def apply_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """Map (..., 4) x0, y0, x1, y1 boxes to the model input frame (float64)."""
    boxes = np.asarray(boxes)
    return apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, input_size).reshape(
        boxes.shape
    )


def apply_coords_torch(
    coords: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """Torch twin of :func:`apply_coords` (float32 result, same device)."""
    sx, sy = _scale(original_size, input_size)
    scale = torch.tensor([sx, sy], dtype=torch.float32, device=coords.device)
    return coords.to(torch.float32) * scale


def apply_boxes_torch(
    boxes: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """Torch twin of :func:`apply_boxes`."""
    shape = boxes.shape
    return apply_coords_torch(boxes.reshape(*shape[:-1], 2, 2), original_size, input_size).reshape(
        shape
    )


def resize_bilinear(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, h, w) float maps to (N, *size), as ``F.interpolate(align_corners=False)``.

    An integer upscaling factor on both axes (SAM's 256 -> 1024 mask upscaling) takes a faster
    path: each of the ``f`` output phases along an axis is a fixed two-tap blend of neighbouring
    rows (or columns), written straight into the interleaved output. Same weights as PyTorch's
    kernel, so results agree to float rounding.
    """
    n, height, width = masks.shape
    fy, fx = size[0] // height, size[1] // width
    if (
        fy * height != size[0]
        or fx * width != size[1]
        or fy < 2
        or fx < 2
        or masks.device.type != "cpu"
    ):
        return F.interpolate(masks[:, None], size, mode="bilinear", align_corners=False)[:, 0]
    # Columns first, on the small input (interleaved, strided writes); then rows, whose phases
    # are whole contiguous output rows.
    columns = masks.new_empty(n, height, width, fx)
    _phase_blend(masks, columns, axis=2, factor=fx)
    out = masks.new_empty(n, height, fy, width * fx)
    _phase_blend(columns.view(n, height, width * fx), out, axis=1, factor=fy)
    return out.view(n, size[0], size[1])


def _phase_blend(x: torch.Tensor, out: torch.Tensor, axis: int, factor: int) -> None:
    """Fill the ``factor`` phases of ``out`` (phase axis right after ``axis``) from ``x``."""
    length = x.shape[axis]
    edge_first = x.narrow(axis, 0, 1)
    edge_last = x.narrow(axis, length - 1, 1)
    previous = torch.cat([edge_first, x.narrow(axis, 0, length - 1)], dim=axis)  # x[i - 1], clamped
    following = torch.cat([x.narrow(axis, 1, length - 1), edge_last], dim=axis)  # x[i + 1], clamped
    for phase in range(factor):
        offset = (phase + 0.5) / factor - 0.5
        target = out.select(axis + 1, phase)
        if offset < 0:
            torch.lerp(x, previous, -offset, out=target)
        else:
            torch.lerp(x, following, offset, out=target)
