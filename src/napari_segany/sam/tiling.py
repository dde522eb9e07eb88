"""Large images in tiles: one contrast mapping for all tiles, and objects merged across borders.

Each tile is segmented on its own (own embedding, own de-duplication). An object cut by a tile
border then appears as a truncated mask in each tile it touches, and an object inside the overlap
of two tiles appears twice. :func:`merge_across_tiles` joins such masks: two masks from
overlapping tiles are the same object when, inside the overlap of the two tiles, their IoU is at
least ``merge_iou``. Pairs are joined from the most to the least similar, and a merged object
never holds two masks of the same tile (so an object and a part of it, both found in one tile,
stay apart). The merged mask is the union of its members.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_segany.image_conversion import ROBUST_PERCENTILES
from napari_segany.sam.mask_records import MaskCandidates

_MAX_SAMPLES = 2**24


def global_contrast_limits(
    image: np.ndarray, contrast_limits: tuple[float, float] | None
) -> tuple[float, float] | None:
    """Contrast limits that make every tile scale like the whole image would.

    Returns the given limits; else None where :func:`to_uint8_rgb` needs none (uint8, bool);
    else (0, 1) for floats within [0, 1]; else the whole image's robust percentiles (estimated
    from at most ~16 million evenly strided pixels, so memory stays bounded).
    """
    if contrast_limits is not None:
        return (float(contrast_limits[0]), float(contrast_limits[1]))
    if np.dtype(image.dtype) in (np.uint8, np.bool_):
        return None
    stride = max(1, int(np.ceil(np.sqrt(np.prod(image.shape[:2]) / _MAX_SAMPLES))))
    sample = np.asarray(image[::stride, ::stride])
    is_float = np.issubdtype(sample.dtype, np.floating)
    values = sample[np.isfinite(sample)] if is_float else sample
    if values.size == 0:
        raise ValueError("image has no finite values")
    if is_float and values.min() >= 0.0 and values.max() <= 1.0:
        return (0.0, 1.0)
    low, high = np.percentile(values, ROBUST_PERCENTILES)
    return (float(low), float(high))


def merge_across_tiles(
    parts: list[tuple[list[int], MaskCandidates]], merge_iou: float = 0.5
) -> MaskCandidates:
    """Join masks of the same object found in different tiles (rule: module docstring).

    Parameters
    ----------
    parts
        Per tile: its box ``[x0, y0, x1, y1]`` (exclusive ends) and its masks in image
        coordinates.
    merge_iou
        Minimum IoU inside the tiles' overlap for two masks to be one object.

    Returns
    -------
    MaskCandidates
        One mask per object; scores, point and crop box from its largest member.
    """
    candidates = MaskCandidates.concatenate([found for _, found in parts])
    tile_of = np.concatenate(
        [np.full(len(found), t) for t, (_, found) in enumerate(parts)] or [np.zeros(0)]
    )
    tile_of = tile_of.astype(np.int64)
    pairs = []
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            overlap = _intersection(parts[a][0], parts[b][0])
            if overlap is None:
                continue
            pairs.extend(_similar_pairs(candidates, tile_of, a, b, overlap, merge_iou))
    if not pairs:
        return candidates

    groups = _join(pairs, tile_of)
    merged = [_union(candidates, members) for members in groups]
    return MaskCandidates.concatenate(merged)


def _intersection(tile_a: list[int], tile_b: list[int]) -> list[int] | None:
    x0, y0 = max(tile_a[0], tile_b[0]), max(tile_a[1], tile_b[1])
    x1, y1 = min(tile_a[2], tile_b[2]), min(tile_a[3], tile_b[3])
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def _similar_pairs(
    candidates: MaskCandidates,
    tile_of: np.ndarray,
    tile_a: int,
    tile_b: int,
    overlap: list[int],
    merge_iou: float,
) -> list[tuple[float, int, int]]:
    """(iou, i, j) for masks i of tile a and j of tile b alike inside the overlap."""
    pieces = {}
    for tile in (tile_a, tile_b):
        for index in np.flatnonzero(tile_of == tile).tolist():
            piece = _clip(candidates, index, overlap)
            if piece is not None:
                pieces[index] = piece
    in_a = [i for i in pieces if tile_of[i] == tile_a]
    in_b = [j for j in pieces if tile_of[j] == tile_b]
    found = []
    for i in in_a:
        box_i, mask_i, area_i = pieces[i]
        for j in in_b:
            box_j, mask_j, area_j = pieces[j]
            common = _intersection(box_i, box_j)
            if common is None:
                continue
            cx0, cy0, cx1, cy1 = common
            a = mask_i[cy0 - box_i[1] : cy1 - box_i[1], cx0 - box_i[0] : cx1 - box_i[0]]
            b = mask_j[cy0 - box_j[1] : cy1 - box_j[1], cx0 - box_j[0] : cx1 - box_j[0]]
            intersection = int(np.count_nonzero(a & b))
            iou = intersection / (area_i + area_j - intersection)
            if iou >= merge_iou:
                found.append((iou, i, j))
    return found


def _clip(candidates: MaskCandidates, index: int, region: list[int]):
    """Mask ``index`` restricted to ``region``: (box with exclusive ends, mask, area) or None."""
    x0, y0, x1, y1 = candidates.boxes[index].tolist()
    box = _intersection([x0, y0, x1 + 1, y1 + 1], region)
    if box is None:
        return None
    crop = candidates.crops[index].numpy()
    piece = crop[box[1] - y0 : box[3] - y0, box[0] - x0 : box[2] - x0]
    area = int(np.count_nonzero(piece))
    return (box, piece, area) if area else None


def _join(pairs: list[tuple[float, int, int]], tile_of: np.ndarray) -> list[list[int]]:
    """Groups of candidate indices: pairs joined by decreasing IoU, one member per tile at most."""
    parent = list(range(len(tile_of)))
    tiles = [{int(t)} for t in tile_of]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        ri, rj = root(i), root(j)
        if ri == rj or tiles[ri] & tiles[rj]:
            continue
        parent[rj] = ri
        tiles[ri] |= tiles[rj]
    groups: dict[int, list[int]] = {}
    for i in range(len(tile_of)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _union(candidates: MaskCandidates, members: list[int]) -> MaskCandidates:
    if len(members) == 1:
        return candidates.select(torch.as_tensor(members))
    boxes = candidates.boxes[members]
    x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
    x1, y1 = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    mask = torch.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=torch.bool)
    for index in members:
        bx0, by0, bx1, by1 = candidates.boxes[index].tolist()
        mask[by0 - y0 : by1 - y0 + 1, bx0 - x0 : bx1 - x0 + 1] |= candidates.crops[index]
    largest = max(members, key=lambda i: int(candidates.crops[i].sum()))
    merged = candidates.select(torch.as_tensor([largest]))
    merged.boxes = torch.as_tensor([[x0, y0, x1, y1]], dtype=torch.long)
    merged.crops = [mask]
    return merged
