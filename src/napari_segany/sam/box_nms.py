"""Boxes of masks and non-maximum suppression in torch (torchvision is not a dependency).

Boxes are ``[x0, y0, x1, y1]`` (x, y order). Mask boxes from :func:`masks_to_boxes` use the
segment-anything convention: ``x1``/``y1`` are the last column/row that holds mask pixels
(inclusive), and an empty mask has the box ``[0, 0, 0, 0]``.
"""

from __future__ import annotations

import numpy as np
import torch

# Above this many boxes the full pairwise IoU matrix is not built; rows are computed on demand.
_FULL_MATRIX_LIMIT = 4096


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes -> (N,) areas ``(x1 - x0) * (y1 - y0)``, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in (N, 4) ``boxes_a`` with every box in (M, 4) ``boxes_b`` -> (N, M).

    Degenerate pairs (both boxes of zero area) give NaN, which no threshold test passes.
    """
    area_a = box_area(boxes_a)
    area_b = box_area(boxes_b)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def non_maximum_suppression(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    categories: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy box NMS, optionally per category (torchvision's ``nms`` / ``batched_nms``).

    Boxes are visited by decreasing score (ties: lower index first); a box is dropped when its
    IoU with an already kept box of the same category is greater than ``iou_threshold``.

    Parameters
    ----------
    boxes
        (N, 4) ``[x0, y0, x1, y1]``; computed in float32.
    scores
        (N,) scores, higher is better.
    iou_threshold
        Boxes overlapping a kept box by more than this IoU are suppressed.
    categories
        Optional (N,) integer category per box; boxes of different categories never suppress
        each other.

    Returns
    -------
    torch.Tensor
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    n_boxes = boxes.shape[0]
    if n_boxes == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order].float().cpu()
    sorted_categories = None if categories is None else categories[order].cpu().numpy()
    keep = _greedy_keep(sorted_boxes, float(iou_threshold), sorted_categories)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def _greedy_keep(
    boxes: torch.Tensor, iou_threshold: float, categories: np.ndarray | None
) -> list[int]:
    n_boxes = boxes.shape[0]
    full = n_boxes <= _FULL_MATRIX_LIMIT
    overlaps = (pairwise_box_iou(boxes, boxes) > iou_threshold).numpy() if full else None
    suppressed = np.zeros(n_boxes, dtype=bool)
    keep = []
    for i in range(n_boxes):
        if suppressed[i]:
            continue
        keep.append(i)
        row = (
            overlaps[i]
            if full
            else (pairwise_box_iou(boxes[i : i + 1], boxes)[0] > iou_threshold).numpy()
        )
        if categories is not None:
            row = row & (categories == categories[i])
        suppressed |= row
    return keep


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around boolean masks (segment-anything convention, see module docstring).

    Parameters
    ----------
    masks
        (N, H, W) bool.

    Returns
    -------
    torch.Tensor
        (N, 4) int64 ``[x0, y0, x1, y1]`` with inclusive ``x1``/``y1``; zeros for empty masks.
    """
    n_masks, height, width = masks.shape
    if n_masks == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    y0, y1 = _first_and_last(rows, height)
    x0, x1 = _first_and_last(cols, width)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes


def _first_and_last(present: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and the last True along dim 1 of (N, L) ``present``."""
    index = torch.arange(length, device=present.device)
    first = torch.where(present, index, length).amin(dim=1)
    last = torch.where(present, index, -1).amax(dim=1)
    return first, last


def boxes_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """Which boxes come within ``atol`` pixels of a crop edge that is not an image edge.

    Parameters
    ----------
    boxes
        (N, 4) boxes in the crop's frame.
    crop_box, image_box
        ``[x0, y0, x1, y1]`` of the crop and of the whole image, in image pixels.

    Returns
    -------
    torch.Tensor
        (N,) bool.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    offset = torch.as_tensor(
        [crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=boxes.device
    )
    in_image = (boxes + offset).float()
    near_crop = torch.isclose(in_image, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(in_image, image[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)
