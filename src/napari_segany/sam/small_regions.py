"""Removing small islands and filling small holes in "segment everything" masks (scikit-image).

Same result as the official generator's ``min_mask_region_area`` post-processing (OpenCV,
8-connectivity), computed on each mask's box instead of the whole image.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label as label_components

from napari_segany.sam.box_nms import non_maximum_suppression
from napari_segany.sam.mask_records import MaskCandidates


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) smaller than a threshold.

    Regions are 8-connected. When every island is small, the largest one is kept.

    Parameters
    ----------
    mask
        (H, W) bool.
    area_thresh
        Regions with fewer pixels than this are changed.
    mode
        ``"holes"`` or ``"islands"``.

    Returns
    -------
    mask
        (H, W) bool result.
    changed
        Whether anything was changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    regions, n_regions = label_components(working, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = [i + 1 for i, size in enumerate(sizes) if size < area_thresh]
    if not small:
        return mask, False
    if fill_holes:
        return mask | np.isin(regions, small), True
    keep = [i for i in range(1, n_regions + 1) if i not in set(small)]
    if not keep:
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, keep), True


def clean_mask_in_box(
    crop: np.ndarray, box: list[int], image_shape: tuple[int, int], min_area: float
) -> tuple[np.ndarray, list[int], bool]:
    """Fill small holes, then drop small islands, of one mask given by its box crop.

    Equal to running :func:`remove_small_regions` (holes, then islands) on the full-size mask.

    Parameters
    ----------
    crop
        (h, w) bool mask inside ``box``.
    box
        ``[x0, y0, x1, y1]`` inclusive, in image pixels.
    image_shape
        (H, W) of the image.
    min_area
        Area threshold in pixels.

    Returns
    -------
    crop, box, changed
        The cleaned mask cropped to its (possibly smaller) new box, that box, and whether the
        mask changed.
    """
    height, width = image_shape
    x0, y0, x1, y1 = box
    pads = ((int(y0 > 0), int(y1 < height - 1)), (int(x0 > 0), int(x1 < width - 1)))
    if any(area < min_area for area in _outside_region_areas(box, image_shape)):
        # The region around the box is itself a small "hole": rare, do it on the whole image.
        full = np.zeros(image_shape, dtype=bool)
        full[y0 : y1 + 1, x0 : x1 + 1] = crop
        full, changed_holes = remove_small_regions(full, min_area, "holes")
        full, changed_islands = remove_small_regions(full, min_area, "islands")
        new_box = _tight_box(full)
        nx0, ny0, nx1, ny1 = new_box
        return full[ny0 : ny1 + 1, nx0 : nx1 + 1], new_box, changed_holes or changed_islands

    # Holes: complement components touching the padding reach the region outside the box, which
    # is at least ``min_area`` large (checked above), so they are never filled.
    padded = np.pad(~crop, pads, constant_values=True)
    regions, n_regions = label_components(padded, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    inside = (
        slice(pads[0][0], padded.shape[0] - pads[0][1]),
        slice(pads[1][0], padded.shape[1] - pads[1][1]),
    )
    inner = regions[inside]
    is_padding = np.ones(padded.shape, dtype=bool)
    is_padding[inside] = False
    touching = np.zeros(n_regions + 1, dtype=bool)
    touching[np.unique(regions[is_padding])] = True
    small_holes = np.flatnonzero((sizes < min_area) & ~touching)
    small_holes = small_holes[small_holes > 0]
    changed = small_holes.size > 0
    if changed:
        crop = crop | np.isin(inner, small_holes)

    cleaned, changed_islands = remove_small_regions(crop, min_area, "islands")
    if not changed_islands:
        return crop, list(box), changed
    cx0, cy0, cx1, cy1 = _tight_box(cleaned)
    new_box = [x0 + cx0, y0 + cy0, x0 + cx1, y0 + cy1]
    return cleaned[cy0 : cy1 + 1, cx0 : cx1 + 1], new_box, True


def postprocess_small_regions(
    candidates: MaskCandidates,
    min_area: float,
    nms_threshold: float,
    image_shape: tuple[int, int],
) -> MaskCandidates:
    """Clean every mask, then drop new duplicates by box NMS preferring unchanged masks.

    Parameters
    ----------
    candidates
        Masks in image coordinates.
    min_area
        Holes and islands smaller than this many pixels are removed.
    nms_threshold
        Box IoU above which a mask is a duplicate.
    image_shape
        (H, W) of the image.
    """
    if len(candidates) == 0:
        return candidates
    crops, boxes, unchanged = [], [], []
    for crop, box in zip(candidates.crops, candidates.boxes.tolist(), strict=True):
        new_crop, new_box, changed = clean_mask_in_box(crop.numpy(), box, image_shape, min_area)
        crops.append(torch.from_numpy(np.ascontiguousarray(new_crop)))
        boxes.append(new_box)
        unchanged.append(float(not changed))
    new_boxes = torch.as_tensor(boxes, dtype=torch.long)
    keep = non_maximum_suppression(new_boxes.float(), torch.as_tensor(unchanged), nms_threshold)
    cleaned = MaskCandidates(
        boxes=new_boxes,
        crops=crops,
        predicted_iou=candidates.predicted_iou,
        stability_score=candidates.stability_score,
        points=candidates.points,
        crop_boxes=candidates.crop_boxes,
    )
    return cleaned.select(keep)


def _outside_region_areas(box: list[int], image_shape: tuple[int, int]) -> list[int]:
    """Areas of the connected parts of the image outside an inclusive box."""
    height, width = image_shape
    x0, y0, x1, y1 = box
    spans_width = x0 == 0 and x1 == width - 1
    spans_height = y0 == 0 and y1 == height - 1
    if spans_width and spans_height:
        return []
    if spans_height:
        return [a for a in (x0 * height, (width - 1 - x1) * height) if a > 0]
    if spans_width:
        return [a for a in (y0 * width, (height - 1 - y1) * width) if a > 0]
    return [height * width - (x1 - x0 + 1) * (y1 - y0 + 1)]


def _tight_box(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]
