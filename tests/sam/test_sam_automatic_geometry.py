"""Pure parts of "segment everything": grids, crops, tiles, NMS, boxes, stability, clean-up, labels."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from napari_segany.sam.box_nms import (
    boxes_near_crop_edge,
    masks_to_boxes,
    non_maximum_suppression,
    pairwise_box_iou,
)
from napari_segany.sam.mask_records import MaskCandidates, records_to_label_image, stability_score
from napari_segany.sam.prompt_grid import (
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    generate_tiles,
    tile_starts,
)
from napari_segany.sam.small_regions import clean_mask_in_box, remove_small_regions


@pytest.fixture(scope="module")
def reference_amg():
    """``segment_anything.utils.amg`` (it imports no torchvision, only its package does)."""
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("segment_anything")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "utils" / "amg.py"
    module_spec = importlib.util.spec_from_file_location("reference_amg", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# -- grids, crops, tiles ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 32])
def test_point_grid_equals_reference(reference_amg, n):
    np.testing.assert_array_equal(build_point_grid(n), reference_amg.build_point_grid(n))


def test_layer_grids_equal_reference(reference_amg):
    ours = build_all_layer_point_grids(16, 2, 2)
    theirs = reference_amg.build_all_layer_point_grids(16, 2, 2)
    assert [len(g) for g in ours] == [256, 64, 16]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(1024, 1024), (700, 1300), (97, 64)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_crop_boxes_equal_reference(reference_amg, size, layers):
    ours = generate_crop_boxes(size, layers, 512 / 1500)
    assert ours == reference_amg.generate_crop_boxes(size, layers, 512 / 1500)
    assert len(ours[0]) == sum(4**i for i in range(layers + 1))


def test_tiles_cover_image_with_overlap():
    assert tile_starts(100, 200, 50) == [0]
    starts = tile_starts(1000, 300, 100)
    assert starts[0] == 0 and starts[-1] == 700
    assert all(b - a <= 200 for a, b in zip(starts, starts[1:], strict=False))  # overlap >= 100
    tiles = generate_tiles((1000, 450), 300, 100)
    covered = np.zeros((1000, 450), dtype=int)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 <= 300 and y1 - y0 <= 300
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    with pytest.raises(ValueError):
        tile_starts(1000, 100, 100)


# -- NMS ----------------------------------------------------------------------------------------
def brute_force_nms(boxes, scores, threshold, categories=None):
    """Textbook greedy NMS with plain Python floats."""
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        ok = True
        for k in kept:
            if categories is not None and categories[i] != categories[k]:
                continue
            a, b = boxes[i], boxes[k]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_equals_brute_force(seed, threshold):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 60, (300, 2), generator=gen)
    wh = torch.randint(1, 40, (300, 2), generator=gen)
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(300, generator=gen)
    scores[::7] = 0.5  # ties
    keep = non_maximum_suppression(boxes.float(), scores, threshold)
    expected = brute_force_nms(boxes.tolist(), scores.tolist(), threshold)
    assert keep.tolist() == expected
    assert 10 < len(expected) < 300  # the case is not trivial

    categories = torch.randint(0, 3, (300,), generator=gen)
    keep = non_maximum_suppression(boxes.float(), scores, threshold, categories)
    assert keep.tolist() == brute_force_nms(
        boxes.tolist(), scores.tolist(), threshold, categories.tolist()
    )


def test_nms_without_full_matrix(monkeypatch):
    import napari_segany.sam.box_nms as box_nms

    gen = torch.Generator().manual_seed(5)
    xy = torch.randint(0, 60, (200, 2), generator=gen)
    boxes = torch.cat([xy, xy + torch.randint(1, 40, (200, 2), generator=gen)], dim=1).float()
    scores = torch.rand(200, generator=gen)
    full = non_maximum_suppression(boxes, scores, 0.5)
    monkeypatch.setattr(box_nms, "_FULL_MATRIX_LIMIT", 10)
    assert non_maximum_suppression(boxes, scores, 0.5).tolist() == full.tolist()


def test_nms_empty_and_degenerate_boxes():
    assert non_maximum_suppression(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    boxes = torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 10, 10]])
    # Zero-area boxes have NaN IoU with each other: nothing suppresses them (as torchvision).
    assert sorted(non_maximum_suppression(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()) == [
        0,
        1,
        2,
    ]
    assert torch.isnan(pairwise_box_iou(boxes[:1], boxes[:1]))[0, 0]


# -- boxes, edges, stability ----------------------------------------------------------------------
def test_masks_to_boxes_equals_reference(reference_amg):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 33, 47, generator=gen) > 0.995
    masks[3] = False
    masks[4, 5:9, 30:31] = True
    ours = masks_to_boxes(masks)
    np.testing.assert_array_equal(ours.numpy(), reference_amg.batched_mask_to_box(masks).numpy())
    assert ours[3].tolist() == [0, 0, 0, 0]


def test_boxes_near_crop_edge_equals_reference(reference_amg):
    gen = torch.Generator().manual_seed(1)
    boxes = torch.randint(0, 300, (200, 4), generator=gen)
    for crop in ([0, 0, 300, 300], [100, 50, 400, 350], [0, 200, 300, 500]):
        ours = boxes_near_crop_edge(boxes, crop, [0, 0, 400, 500])
        theirs = reference_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 400, 500])
        assert torch.equal(ours, theirs)
        assert ours.any() or crop[0] == 0


def test_stability_score_equals_reference_and_definition(reference_amg):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 40, 50, generator=gen) * 3
    ours = stability_score(logits, 0.0, 1.0)
    assert torch.equal(ours, reference_amg.calculate_stability_score(logits, 0.0, 1.0))
    inner, outer = (logits[0] > 1).sum(), (logits[0] > -1).sum()
    assert ours[0].item() == pytest.approx(inner.item() / outer.item())
    assert torch.isnan(stability_score(torch.full((1, 4, 4), -5.0), 0.0, 1.0))[0]


# -- small regions --------------------------------------------------------------------------------
@pytest.fixture
def skimage_as_cv2(monkeypatch):
    """A stand-in for ``cv2.connectedComponentsWithStats`` (OpenCV is not installed)."""
    from skimage.measure import label

    def connected_components_with_stats(image, connectivity):
        regions = label(image.astype(bool), connectivity=2 if connectivity == 8 else 1)
        n = int(regions.max()) + 1
        sizes = np.bincount(regions.ravel(), minlength=n)
        stats = np.zeros((n, 5), dtype=np.int32)
        stats[:, -1] = sizes
        return n, regions.astype(np.int32), stats, None

    monkeypatch.setitem(
        sys.modules,
        "cv2",
        types.SimpleNamespace(connectedComponentsWithStats=connected_components_with_stats),
    )


def _blobby_masks(seed, n=12, shape=(60, 80)):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        mask = np.zeros(shape, dtype=bool)
        y0, x0 = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        mask[y0 : y0 + rng.integers(5, 40), x0 : x0 + rng.integers(5, 60)] = True
        mask ^= rng.random(shape) < 0.03  # holes inside, islands outside
        masks.append(mask)
    masks.append(np.ones(shape, dtype=bool))  # touches every image edge
    edge = np.zeros(shape, dtype=bool)
    edge[:, 3:] = True  # the outside is one thin column: a small "hole"
    masks.append(edge)
    return masks


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_reference(reference_amg, skimage_as_cv2, mode):
    for mask in _blobby_masks(0):
        ours, changed = remove_small_regions(mask, 30, mode)
        theirs, their_changed = reference_amg.remove_small_regions(mask, 30, mode)
        np.testing.assert_array_equal(ours, theirs)
        assert changed == their_changed


def test_clean_mask_in_box_equals_whole_image_clean_up(reference_amg, skimage_as_cv2):
    changed_any = False
    for mask in _blobby_masks(1):
        expected, c1 = reference_amg.remove_small_regions(mask, 30, "holes")
        expected, c2 = reference_amg.remove_small_regions(expected, 30, "islands")
        box = masks_to_boxes(torch.from_numpy(mask)[None])[0].tolist()
        crop = mask[box[1] : box[3] + 1, box[0] : box[2] + 1]
        new_crop, new_box, changed = clean_mask_in_box(crop, box, mask.shape, 30)
        result = np.zeros_like(mask)
        result[new_box[1] : new_box[3] + 1, new_box[0] : new_box[2] + 1] = new_crop
        np.testing.assert_array_equal(result, expected)
        assert changed == (c1 or c2)
        changed_any |= changed
    assert changed_any


# -- label image ----------------------------------------------------------------------------------
def _record(mask, iou=0.9, stability=0.95):
    return {
        "segmentation": mask,
        "predicted_iou": iou,
        "stability_score": stability,
        "area": int(mask.sum()),
    }


def test_label_image_keeps_nested_and_overlapping_objects():
    shape = (40, 50)
    cell = np.zeros(shape, dtype=bool)
    cell[5:35, 5:35] = True
    nucleus = np.zeros(shape, dtype=bool)
    nucleus[15:22, 15:22] = True
    neighbour = np.zeros(shape, dtype=bool)
    neighbour[10:30, 30:48] = True  # overlaps the cell's right border
    # The large cell comes first and has the best score: it must not swallow the nucleus, and
    # the nucleus must not erase the cell.
    labels = records_to_label_image(
        [_record(cell, 0.99), _record(nucleus, 0.5), _record(neighbour, 0.7)], shape
    )
    assert labels.dtype == np.int32 and labels.shape == shape
    assert len(np.unique(labels)) == 4
    nucleus_label = labels[18, 18]
    cell_label = labels[6, 6]
    neighbour_label = labels[20, 45]
    assert len({nucleus_label, cell_label, neighbour_label, 0}) == 4
    assert np.array_equal(labels == nucleus_label, nucleus)  # smallest: all its pixels
    assert np.array_equal(labels == cell_label, cell & ~nucleus & ~neighbour)  # only overlaps lost
    assert (labels[neighbour] == neighbour_label).all()  # smaller than the cell: keeps the overlap
    assert labels[~(cell | neighbour)].max() == 0


def test_label_image_ties_and_swallowed_masks():
    shape = (10, 10)
    a = np.zeros(shape, dtype=bool)
    a[2:6, 2:6] = True
    b = np.zeros(shape, dtype=bool)
    b[3:7, 3:7] = True  # same area as a: the better-scored one wins the overlap
    labels = records_to_label_image([_record(a, 0.5), _record(b, 0.9)], shape)
    assert labels[4, 4] == labels[6, 6] != labels[2, 2]
    # A mask entirely covered by smaller ones gets no label; labels stay consecutive.
    big = a | b
    labels = records_to_label_image([_record(big), _record(a), _record(b & ~a)], shape)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert records_to_label_image([], shape).max() == 0
    with pytest.raises(ValueError):
        records_to_label_image([_record(a)], (5, 5))


def test_candidates_records_round_trip():
    crops = [torch.ones(3, 4, dtype=torch.bool), torch.tensor([[True, False], [False, True]])]
    candidates = MaskCandidates(
        boxes=torch.tensor([[1, 2, 4, 4], [5, 5, 6, 6]]),
        crops=crops,
        predicted_iou=torch.tensor([0.9, 0.8]),
        stability_score=torch.tensor([0.97, 0.96]),
        points=torch.tensor([[2.5, 3.5], [5.5, 5.5]], dtype=torch.float64),
        crop_boxes=torch.tensor([[0, 0, 10, 8], [0, 0, 10, 8]]),
    )
    records = candidates.to_records((8, 10))
    assert records[0]["area"] == 12 and records[1]["area"] == 2
    assert records[0]["bbox"] == [1, 2, 3, 2]  # XYWH with the reference's inclusive convention
    assert records[0]["crop_box"] == [0, 0, 10, 8]
    assert records[1]["point_coords"] == [[5.5, 5.5]]
    assert records[0]["segmentation"].sum() == 12 and records[0]["segmentation"][2:5, 1:5].all()
    shifted = candidates.shifted(10, 20)
    assert shifted.boxes[0].tolist() == [11, 22, 14, 24]
    assert shifted.points[0].tolist() == [12.5, 23.5]


def test_clean_up_when_the_outside_of_the_box_is_a_small_hole(reference_amg, skimage_as_cv2):
    mask = np.ones((60, 80), dtype=bool)
    mask[:, -1] = False  # the region outside the box (60 px) is a hole smaller than 100 px
    mask[10:12, 10:12] = False
    expected, _ = reference_amg.remove_small_regions(mask, 100, "holes")
    expected, _ = reference_amg.remove_small_regions(expected, 100, "islands")
    crop, box, changed = clean_mask_in_box(mask[:, :-1], [0, 0, 78, 59], mask.shape, 100)
    assert changed and box == [0, 0, 79, 59] and expected.all()
    np.testing.assert_array_equal(crop, expected)


def test_all_islands_small_keeps_the_largest():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True
    mask[10:13, 10:13] = True
    cleaned, changed = remove_small_regions(mask, 50, "islands")
    assert changed and cleaned.sum() == 9 and cleaned[11, 11]


def test_global_contrast_limits_are_the_whole_images():
    from napari_segany.image_conversion import to_uint8_rgb
    from napari_segany.sam.tiling import global_contrast_limits

    image = np.linspace(0, 5000, 200 * 300).reshape(200, 300).astype(np.uint16)
    limits = global_contrast_limits(image, None)
    expected = to_uint8_rgb(image)
    tile = to_uint8_rgb(image[100:, 150:], limits)  # a tile scales like the whole image
    np.testing.assert_array_equal(tile, expected[100:, 150:])
    assert global_contrast_limits(image, (1, 2)) == (1.0, 2.0)
    assert global_contrast_limits(image.astype(np.uint8), None) is None
    assert global_contrast_limits(np.full((4, 4), 0.5), None) == (0.0, 1.0)
