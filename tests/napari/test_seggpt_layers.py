"""Layer glue and the scripting function, on napari layer objects without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_segany._napari.layer_io import slice_key_at
from napari_segany._napari.sample_data import blobs_stack
from napari_segany._napari.seggpt_layers import (
    new_output_layer,
    plan_from_layers,
    prompt_keys_from_selection,
    segment_layers_with_seggpt,
)


def painted_layers(depth=4, size=24, painted=(1,), **placement):
    image, truth = blobs_stack((depth, size, size))
    labels = np.zeros_like(truth)
    for z in painted:
        labels[z] = truth[z]
    return Image(image, name="stack", **placement), Labels(labels, name="painted", **placement)


def test_scripting_function_returns_a_placed_full_stack(tiny_seggpt_predictor):
    image, labels = painted_layers(scale=(3.0, 0.5, 0.25), translate=(1.0, 2.0, 3.0))
    result = segment_layers_with_seggpt(image, labels, model=tiny_seggpt_predictor)
    assert isinstance(result, Labels) and result.data.shape == image.data.shape
    np.testing.assert_allclose(result.scale, image.scale)
    np.testing.assert_allclose(result.translate, image.translate)
    np.testing.assert_array_equal(result.data[1], labels.data[1])  # painted slice, as painted
    assert all(result.data[z].any() for z in (0, 2, 3))


def test_scripting_function_loads_a_model_from_a_path_and_writes_into_a_layer(
    tiny_seggpt_hf_folder,
):
    image, labels = painted_layers()
    before = labels.data.copy()
    result = segment_layers_with_seggpt(
        image,
        labels,
        output_layer=labels,
        slices=range(2, 4),
        model=str(tiny_seggpt_hf_folder),
        device="cpu",
        precision="fp32",
    )
    assert result is labels
    np.testing.assert_array_equal(labels.data[:2], before[:2])  # slice 0 not chosen, 1 painted
    assert labels.data[2].any() and labels.data[3].any()
    labels.undo()  # the run is one undo step
    np.testing.assert_array_equal(labels.data, before)


def test_current_slice_goes_through_the_layer_transform():
    image, _ = painted_layers(depth=6, scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    # World z = 10 + 2 * index: world 16 is slice 3; a 4D viewer point uses its last 3 values.
    assert slice_key_at(image, (16.0, 5.0, 5.0)) == (3,)
    assert slice_key_at(image, (0.0, 16.2, 5.0, 5.0)) == (3,)
    assert slice_key_at(image, (1000.0, 0.0, 0.0)) == (5,)
    assert slice_key_at(Image(np.zeros((8, 8))), (3.0, 4.0)) == ()


def test_new_output_layer_drops_the_colour_axis_of_rgb_images():
    rgb = Image(np.zeros((3, 10, 12, 3), np.uint8), rgb=True, scale=(1.0, 2.0, 2.0))
    out = new_output_layer(rgb)
    assert out.data.shape == (3, 10, 12) and out.data.dtype == np.int32
    np.testing.assert_allclose(out.scale, (1.0, 2.0, 2.0))


def test_prompt_slices_by_index_and_errors():
    _, labels = painted_layers(painted=(0, 2))
    assert prompt_keys_from_selection(labels, None) is None
    assert prompt_keys_from_selection(labels, [2]) == [(2,)]
    with pytest.raises(ValueError, match="slice 1 of 'painted' has no labels"):
        prompt_keys_from_selection(labels, [1])


def test_plan_uses_full_resolution_of_multiscale_and_refuses_wrong_layer_types():
    image, labels = painted_layers()
    pyramid = Image([image.data, image.data[:, ::2, ::2]], multiscale=True, name="pyramid")
    plan = plan_from_layers(pyramid, labels)  # one policy with SAM: level 0
    assert plan.target_layout.spatial_shape == image.data.shape[-2:]
    assert new_output_layer(pyramid).data.shape == image.data.shape
    with pytest.raises(ValueError, match="not a labels layer"):
        plan_from_layers(image, image)
    with pytest.raises(ValueError, match="current slice"):
        plan_from_layers(image, labels, slices="current")
