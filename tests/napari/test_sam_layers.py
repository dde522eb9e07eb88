"""Layer ↔ array glue and scripting functions, on layer objects without a viewer."""

import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_segany._napari import layer_io
from napari_segany._napari import sam_layers as glue
from napari_segany._napari.sam_scripting import (
    propagate_label_through_stack,
    segment_everything_in_layer,
    segment_layers_with_sam,
)
from napari_segany.sam.interactive_session import SamPrompts

SCALE = (2.0, 0.5, 0.25)
TRANSLATE = (10.0, -3.0, 4.0)


def stack_layer(shape=(5, 40, 48)):
    data = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    return Image(data, scale=SCALE, translate=TRANSLATE, name="stack")


def test_shapes_and_slice_index_follow_world_coordinates():
    image = stack_layer()
    assert layer_io.spatial_shape(image) == (5, 40, 48) and layer_io.n_leading_axes(image) == 1
    world = np.array(TRANSLATE) + np.array(SCALE) * [3, 10, 10]
    assert layer_io.slice_key_at(image, world) == (3,)
    assert layer_io.slice_key_at(image, [1e6, 0, 0]) == (4,)  # clipped into the stack
    rgb = Image(np.zeros((6, 7, 3), np.uint8), rgb=True)
    assert layer_io.spatial_shape(rgb) == (6, 7) and layer_io.slice_key_at(rgb, [0, 0]) == ()
    assert (
        layer_io.read_slice(rgb, ()).shape == (6, 7, 3) and layer_io.contrast_limits_of(rgb) is None
    )


def test_points_in_another_transform_land_on_the_right_pixels():
    image = stack_layer()
    # a points layer with its own transform: world = data * 1 + 0 (identity)
    target = np.array([[3, 12, 20], [3, 30, 5], [1, 2, 2]], dtype=float)  # image data coordinates
    world = np.asarray(TRANSLATE) + np.asarray(SCALE) * target
    points = Points(world, features={"prompt": ["positive", "negative", "positive"]})
    rc, labels = glue.points_on_slice(points, image, (3,))
    np.testing.assert_allclose(rc, [[12, 20], [30, 5]])
    np.testing.assert_array_equal(labels, [1, 0])
    assert glue.prompt_slices(image, points, None) == [(1,), (3,)]
    # a 2D points layer on a 3D image applies to the given slice
    flat = Points(world[:1, 1:])
    rc, labels = glue.points_on_slice(flat, image, (2,))
    np.testing.assert_allclose(rc, [[12, 20]])
    np.testing.assert_array_equal(labels, [1])


def test_rectangles_become_boxes_on_their_slice_only():
    image = stack_layer()
    rect = np.array([[2, 5, 6], [2, 5, 16], [2, 15, 16], [2, 15, 6]], dtype=float)
    world = np.asarray(TRANSLATE) + np.asarray(SCALE) * rect
    shapes = Shapes([world, world[:, :] + [0, 1, 1]], shape_type=["rectangle", "ellipse"])
    (box,) = glue.boxes_on_slice(shapes, image, (2,))
    np.testing.assert_allclose(box, rect[:, 1:])
    assert glue.boxes_on_slice(shapes, image, (3,)) == []


def test_prompts_outside_the_image_are_rejected():
    glue.check_prompts_inside(SamPrompts(np.array([[0.0, 47.0]]), np.array([1])), (40, 48))
    with pytest.raises(ValueError, match="outside"):
        glue.check_prompts_inside(SamPrompts(np.array([[41.0, 3.0]]), np.array([1])), (40, 48))
    far_box = [np.array([[50.0, 50.0], [60.0, 60.0]])]
    with pytest.raises(ValueError, match="box"):
        glue.check_prompts_inside(SamPrompts(boxes_corners=far_box), (40, 48))


def test_new_labels_layer_sits_on_the_image():
    image = stack_layer()
    labels = layer_io.new_labels_layer(image, "out")
    assert labels.data.shape == (5, 40, 48) and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, SCALE)
    np.testing.assert_allclose(labels.translate, TRANSLATE)
    np.testing.assert_allclose(labels.data_to_world([1, 2, 3]), image.data_to_world([1, 2, 3]))


def test_write_masks_keeps_existing_labels_and_is_one_undo_step():
    labels = Labels(np.zeros((3, 10, 10), np.int32))
    labels.data[1, 0:3, 0:3] = 5
    a = np.zeros((10, 10), bool)
    a[0:5, 0:5] = True
    b = np.zeros((10, 10), bool)
    b[6:9, 6:9] = True
    ids = glue.write_masks(labels, (1,), [a, b])
    assert ids == [6, 7]
    assert (labels.data[1, 0:3, 0:3] == 5).all()  # earlier label survived
    assert (labels.data[1][a & (labels.data[1] != 5)] == 6).all() and (labels.data[1][b] == 7).all()
    assert not labels.data[[0, 2]].any()
    labels.undo()
    assert set(np.unique(labels.data)) == {0, 5}
    glue.write_masks(labels, (1,), [a], overwrite=True)
    assert (labels.data[1][a] == 6).all()


def test_refining_a_label_replaces_it_on_that_slice():
    labels = Labels(np.zeros((2, 8, 8), np.int32))
    labels.data[:, 0:4, 0:4] = 3
    new = np.zeros((8, 8), bool)
    new[2:6, 2:6] = True
    assert glue.write_masks(labels, (0,), [new], replace_label=3, label_ids=[3]) == [3]
    np.testing.assert_array_equal(labels.data[0] == 3, new)
    assert (labels.data[1, 0:4, 0:4] == 3).all()  # other slice untouched


def test_labels_of_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="shape"):
        layer_io.check_labels_fit(Labels(np.zeros((4, 4), np.int32)), stack_layer())
    with pytest.raises(ValueError, match="no image"):
        glue.check_image_layer(None)


def test_scripting_segment_layers_with_points_and_boxes(tiny_sam_hf_folder):
    image = stack_layer((4, 40, 48))
    existing = layer_io.new_labels_layer(image, "labels")
    existing.data[2, 0:4, 0:4] = 9
    target = np.array([[2, 20, 20]], dtype=float)
    points = Points(np.asarray(TRANSLATE) + np.asarray(SCALE) * target)
    rect = np.array([[1, 5, 5], [1, 5, 30], [1, 30, 30], [1, 30, 5]], dtype=float)
    shapes = Shapes([np.asarray(TRANSLATE) + np.asarray(SCALE) * rect], shape_type="rectangle")
    out = segment_layers_with_sam(
        image,
        points,
        shapes,
        existing,
        model=str(tiny_sam_hf_folder),
        device="cpu",
        precision="fp32",
    )
    assert out is existing and out.data.dtype == np.int32
    assert (out.data[2, 0:4, 0:4] == 9).all()
    assert set(np.unique(out.data[1])) <= {0, 10, 11} and set(np.unique(out.data[2])) <= {
        0,
        9,
        10,
        11,
    }
    assert out.data[1].any() and (out.data[2] > 9).any()
    assert not out.data[[0, 3]].any()
    # the importable-from-sam_layers alias


def test_scripting_new_layer_everything_and_propagation(tiny_sam_model):
    image = stack_layer((3, 32, 32))
    points = Points(np.asarray(TRANSLATE) + np.asarray(SCALE) * np.array([[1.0, 16.0, 16.0]]))
    labels = segment_layers_with_sam(image, points, model=tiny_sam_model)
    assert labels.data.shape == (3, 32, 32)
    np.testing.assert_allclose(labels.scale, SCALE)
    label = int(labels.data[1].max())
    assert label == 1
    masks = propagate_label_through_stack(
        image,
        labels,
        label,
        (1,),
        model=tiny_sam_model,
        min_score=-1.0,
        min_area=1,
        min_overlap=0.0,
    )
    for z, mask in masks.items():
        assert ((labels.data[z] == label) == mask).all()
    everything = segment_everything_in_layer(
        image,
        model=tiny_sam_model,
        slice_index=(2,),
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert everything.data.shape == (3, 32, 32) and everything.data.dtype == np.int32
    assert not everything.data[:2].any()
    with pytest.raises(ValueError, match="2D"):
        propagate_label_through_stack(
            Image(np.zeros((8, 8))), Labels(np.zeros((8, 8), int)), 1, (), model=tiny_sam_model
        )


def test_4d_time_series_segments_and_propagates_within_one_time_point(tiny_sam_model):
    data = np.random.default_rng(5).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    image = Image(data, scale=(1.0, 2.0, 0.5, 0.5), translate=(0.0, 1.0, 2.0, 3.0))
    assert layer_io.n_leading_axes(image) == 2
    points = Points(np.asarray(image.data_to_world([1, 2, 16, 16]))[None])
    labels = segment_layers_with_sam(image, points, model=tiny_sam_model, precision="fp32")
    assert labels.data.shape == (2, 3, 32, 32)
    touched = {tuple(i) for i in np.argwhere(labels.data.any(axis=(2, 3)))}
    assert touched == {(1, 2)}
    masks = propagate_label_through_stack(
        image, labels, 1, (1, 2), model=tiny_sam_model, min_score=-1.0, min_area=1, min_overlap=0.0
    )
    assert masks and set(masks) <= {0, 1}
    touched = {tuple(i) for i in np.argwhere(labels.data.any(axis=(2, 3)))}
    assert touched == {(1, 2)} | {(1, z) for z in masks}
    assert not labels.data[0].any()


def test_paint_preview_earlier_masks_win_and_ids_cycle():
    from napari_segany._napari.sam_prompt_layers import paint_preview

    rng = np.random.default_rng(0)
    masks = [rng.random((40, 50)) > p for p in (0.5, 0.3, 0.6)]
    region = (slice(5, 35), slice(10, 45))
    expected = np.zeros((30, 35), np.uint8)
    for i, mask in enumerate(masks):  # the definition: mask i where no earlier mask is
        painted = mask[region] & (expected == 0)
        expected[painted] = i + 1
    np.testing.assert_array_equal(paint_preview(masks, region), expected)
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    many = [np.zeros((4, 4), bool) for _ in range(256)]
    many[254][2, 2] = many[255][1, 1] = True
    out = paint_preview(many, (slice(0, 4), slice(0, 4)))
    assert out[2, 2] == 1 and out[1, 1] == 2 and out.sum() == 3  # ids 1..254, then again
    empty = paint_preview([], region)
    assert empty.shape == (30, 35) and not empty.any()
