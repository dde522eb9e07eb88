"""The tile-merge rule of segment everything: pieces of one object in overlapping tiles are joined,
but a group never holds two masks of the same tile (two objects of one tile stay two)."""

from __future__ import annotations

import numpy as np
import torch

from napari_segany.sam.mask_records import MaskCandidates
from napari_segany.sam.tiling import merge_across_tiles

SHAPE = (40, 100)  # (rows, cols)
TILE_A = [0, 0, 60, 40]  # x0, y0, x1, y1 (exclusive ends); overlap with B: x 40..60
TILE_B = [40, 0, 100, 40]


def _candidates(masks: list[np.ndarray], tile: list[int]) -> MaskCandidates:
    found = []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        box = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]
        found.append((box, torch.from_numpy(mask[box[1] : box[3] + 1, box[0] : box[2] + 1].copy())))
    return MaskCandidates(
        boxes=torch.as_tensor([b for b, _ in found]),
        crops=[c for _, c in found],
        predicted_iou=torch.full((len(found),), 0.9),
        stability_score=torch.full((len(found),), 0.95),
        points=torch.zeros(len(found), 2, dtype=torch.float64),
        crop_boxes=torch.as_tensor([tile] * len(found)),
    )


def _box_mask(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_at_most_one_mask_per_tile_in_a_merged_object():
    # Tile A found two objects (top and bottom half); tile B one mask covering both halves of
    # the overlap. Each of A's masks is alike enough to B's (IoU 0.5 in the overlap), but the two
    # A objects must not be chained together through B.
    top, bottom = _box_mask(30, 0, 60, 20), _box_mask(30, 20, 60, 40)
    wide = _box_mask(40, 0, 95, 40)
    parts = [(TILE_A, _candidates([top, bottom], TILE_A)), (TILE_B, _candidates([wide], TILE_B))]
    merged = merge_across_tiles(parts, merge_iou=0.4)
    assert len(merged) == 2
    masks = [merged.full_mask(i, SHAPE) for i in range(2)]
    joined = [m for m in masks if m[:, 90].any()]
    alone = [m for m in masks if not m[:, 90].any()]
    assert len(joined) == 1 and len(alone) == 1  # B joined one A object, the other stays apart
    options = [(wide | top, bottom), (wide | bottom, top)]
    assert any(np.array_equal(joined[0], j) and np.array_equal(alone[0], a) for j, a in options)


def test_pieces_of_one_object_are_joined():
    bar = _box_mask(10, 10, 90, 30)
    piece_a, piece_b = bar & _box_mask(0, 0, 60, 40), bar & _box_mask(40, 0, 100, 40)
    parts = [(TILE_A, _candidates([piece_a], TILE_A)), (TILE_B, _candidates([piece_b], TILE_B))]
    merged = merge_across_tiles(parts, merge_iou=0.5)
    assert len(merged) == 1
    np.testing.assert_array_equal(merged.full_mask(0, SHAPE), bar)
