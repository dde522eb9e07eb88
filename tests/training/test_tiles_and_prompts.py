"""Training tiles from labels, held-out slice separation, simulated prompts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_segany.training.prompts import correction_click, jitter_box, object_prompts
from napari_segany.training.tiles import separate_held_out, tiles_from_labels


def _labels_with_objects(shape=(300, 500)):
    labels = np.zeros(shape, np.int32)
    labels[20:60, 30:70] = 1  # 1600 px
    labels[200:240, 420:470] = 2  # far away: another tile
    labels[100:104, 100:104] = 3  # 16 px: dropped
    labels[30:50, 90:110] = 4  # next to object 1: same tile
    return labels


def test_tiles_cover_every_large_object_at_the_model_input_size():
    labels = _labels_with_objects()
    image = np.random.default_rng(0).integers(0, 4000, labels.shape).astype(np.uint16)
    tiles = tiles_from_labels(image, labels, tile_size=128)
    covered = {v for t in tiles for v in t.object_ids}
    assert covered == {1, 2, 4}
    for tile in tiles:
        assert tile.image.shape == (128, 128, 3) and tile.image.dtype == np.uint8
        top, left = tile.origin
        np.testing.assert_array_equal(tile.labels, labels[top : top + 128, left : left + 128])
        assert 3 not in tile.object_ids
    assert len(tiles) == 2


def test_tiles_use_the_whole_image_preprocessing_and_small_images_whole():
    labels = np.zeros((60, 80), np.int32)
    labels[10:30, 10:30] = 7
    image = np.linspace(0, 1000, 60 * 80).reshape(60, 80)
    (tile,) = tiles_from_labels(image, labels, tile_size=128, contrast_limits=(0, 1000))
    assert tile.image.shape == (60, 80, 3) and tile.object_ids == (7,)
    assert tile.image[0, 0, 0] == 0 and tile.image[-1, -1, 0] == 255


def test_stack_input_and_max_tiles():
    labels = np.stack([_labels_with_objects()] * 3)
    image = np.zeros(labels.shape)
    assert len(tiles_from_labels(image, labels, tile_size=128)) == 6
    kept = tiles_from_labels(image, labels, tile_size=128, max_tiles=3)
    assert len(kept) == 3 and all(set(t.object_ids) == {1, 4} for t in kept)


def test_held_out_slices_are_kept_two_slices_apart():
    train, held = separate_held_out(range(10), [5], gap=2)
    assert held == [5]
    assert train == [0, 1, 2, 8, 9]
    assert all(abs(t - h) > 2 for t in train for h in held)


def test_object_prompts_points_and_negatives():
    mask = np.zeros((128, 128), bool)
    rows, cols = np.mgrid[:128, :128]
    mask[(rows - 64) ** 2 + (cols - 60) ** 2 < 25**2] = True
    prompts = object_prompts(mask, np.random.default_rng(0))
    distance = ndimage.distance_transform_edt(mask)
    xy = prompts.interior.astype(int)
    assert len(xy) > 50 and (distance[xy[:, 1], xy[:, 0]] >= 10).all()
    neg = prompts.negatives.astype(int)
    x0, y0, x1, y1 = prompts.dilated_box
    assert len(neg) > 10 and not mask[neg[:, 1], neg[:, 0]].any()
    assert ((neg[:, 0] >= x0) & (neg[:, 0] < x1) & (neg[:, 1] >= y0) & (neg[:, 1] < y1)).all()
    np.testing.assert_allclose(prompts.centre, [60, 64], atol=1)
    np.testing.assert_allclose(prompts.box, [36, 40, 84, 88], atol=1)


def test_jittered_boxes_stay_valid_and_near():
    rng = np.random.default_rng(0)
    box = np.array([10.0, 20.0, 50.0, 40.0])
    for _ in range(200):
        out = jitter_box(box, rng, (64, 64))
        assert out[0] < out[2] and out[1] < out[3]
        assert (out >= 0).all() and out[2] <= 63 and out[3] <= 63
        assert np.abs(out - box).max() <= 20


def test_correction_click_targets_the_largest_error():
    target = np.zeros((50, 50), bool)
    target[10:40, 10:40] = True
    prediction = target.copy()
    prediction[10:40, 25:40] = False  # missed right half
    point, label = correction_click(prediction, target)
    assert (
        label == 1
        and target[int(point[1]), int(point[0])]
        and not prediction[int(point[1]), int(point[0])]
    )
    prediction = target.copy()
    prediction[0:5, :] = True  # extra strip
    point, label = correction_click(prediction, target)
    assert label == 0 and int(point[1]) < 5
    region = np.zeros_like(target)
    assert correction_click(prediction, target, region) is None


def test_parse_slices_and_build_request_for_a_stack():
    import pytest

    from napari_segany.training.finetune_job import build_request, parse_slices
    from napari_segany.training.settings import FinetuneSettings

    assert parse_slices("all", 4) == [0, 1, 2, 3]
    assert parse_slices("0-2, 5, -1", 10) == [0, 1, 2, 5, 9]
    assert parse_slices("2:4", 10) == [2, 3]
    assert parse_slices("", 3) == []
    with pytest.raises(ValueError, match="outside"):
        parse_slices("7", 3)
    with pytest.raises(ValueError, match="cannot read"):
        parse_slices("a-b", 3)
    stack = np.zeros((10, 32, 32))
    labels = np.zeros((10, 32, 32), np.int32)
    request = build_request(
        stack,
        labels,
        rgb=False,
        train_slices="0-6",
        held_out_slices="8",
        model_source="sam-vit-b",
        device="cpu",
        precision="fp32",
        settings=FinetuneSettings(),
        save_folder="out",
    )
    assert request.provenance["train_slices"] == [0, 1, 2, 3, 4, 5]  # 6 is 2 from 8
    assert request.provenance["held_out_slices"] == [8]
    assert len(request.images) == 6 and len(request.val_images) == 1
    assert "left out" in request.notes[0]
    flat = build_request(
        np.zeros((32, 32, 3), np.uint8),
        labels[0],
        rgb=True,
        train_slices="all",
        held_out_slices="3",
        model_source="m",
        device="cpu",
        precision="fp32",
        settings=FinetuneSettings(),
        save_folder="out",
    )
    assert len(flat.images) == 1 and flat.val_images == []
    with pytest.raises(ValueError, match="no training slice"):
        build_request(
            stack, labels, rgb=False, train_slices="7", held_out_slices="8",
            model_source="m", device="cpu", precision="fp32",
            settings=FinetuneSettings(), save_folder="out",
        )  # fmt: skip
