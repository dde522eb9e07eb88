"""SegGptPredictor: order of calls, input checks, batches, colour-mask prompts, palette."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.seggpt import (
    MAX_LABELS,
    build_palette,
    labels_to_rgb,
    palette_step,
    rgb_to_labels,
)


def _prompt(rng, shape=(32, 32), labels=4):
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8), rng.integers(0, labels + 1, shape)


# ---------------------------------------------------------------- palette


@pytest.mark.parametrize("num_labels", [1, 2, 7, 8, 26, 27, 63, 64, 100, 500, MAX_LABELS])
def test_palette_round_trip(num_labels):
    palette = build_palette(num_labels)
    assert palette.shape == (num_labels + 1, 3) and palette.dtype == np.uint8
    assert len(np.unique(palette, axis=0)) == num_labels + 1  # all colours distinct
    labels = np.arange(num_labels + 1).reshape(1, -1).repeat(3, axis=0)
    decoded, distance = rgb_to_labels(labels_to_rgb(labels, palette), palette)
    np.testing.assert_array_equal(decoded, labels)
    assert np.all(distance == 0)
    # a colour nudged by less than half a palette step still decodes to its label
    nudged = labels_to_rgb(labels, palette).astype(np.float32)
    nudged += np.where(nudged > 127, -1, 1) * (palette_step(num_labels) / 2 - 1) / np.sqrt(3)
    np.testing.assert_array_equal(rgb_to_labels(nudged, palette)[0], labels)


def test_palette_matches_transformers():
    from transformers.models.seggpt.image_processing_pil_seggpt import build_palette as reference

    for num_labels in (0, 1, 5, 26, 27, 64, 333, MAX_LABELS):
        np.testing.assert_array_equal(build_palette(num_labels), np.array(reference(num_labels)))


def test_palette_limit_is_stated():
    assert (
        MAX_LABELS == 4096 and palette_step(MAX_LABELS) == 16 and palette_step(MAX_LABELS + 1) < 16
    )
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS} labels"):
        build_palette(MAX_LABELS + 1)


# ---------------------------------------------------------------- errors


def test_predict_before_set_prompts_raises(tiny_seggpt_predictor):
    image = np.zeros((16, 16), np.uint8)
    with pytest.raises(RuntimeError, match="set_prompts"):
        tiny_seggpt_predictor.predict(image)
    with pytest.raises(RuntimeError, match="set_prompts"):
        tiny_seggpt_predictor.predict_batch([image])
    with pytest.raises(RuntimeError, match="set_prompts"):
        tiny_seggpt_predictor.palette  # noqa: B018


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((31, 32), np.int32), "shape"),
        (np.ones((32, 32), np.float32), "integers"),
        (-np.ones((32, 32), np.int32), "negative"),
        (np.full((32, 32), MAX_LABELS + 1, np.int32), f"at most {MAX_LABELS}"),
        (np.zeros((32, 32), np.int32), "no labels"),
        (np.zeros((32, 32, 2), np.int32), r"\(H, W\)"),
    ],
)
def test_bad_labels_raise_value_error(tiny_seggpt_predictor, labels, match):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        tiny_seggpt_predictor.set_prompts([image], [labels])
    assert not tiny_seggpt_predictor.has_prompts


def test_other_bad_prompt_arguments(tiny_seggpt_predictor):
    rng = np.random.default_rng(0)
    image, labels = _prompt(rng)
    with pytest.raises(ValueError, match="one label map per prompt"):
        tiny_seggpt_predictor.set_prompts([image, image], [labels])
    with pytest.raises(ValueError, match="one label map per prompt"):
        tiny_seggpt_predictor.set_prompts([], [])
    with pytest.raises(ValueError, match="num_labels"):
        tiny_seggpt_predictor.set_prompts([image], [labels], num_labels=2)
    with pytest.raises(ValueError, match="prompt_type"):
        tiny_seggpt_predictor.set_prompts([image], [labels], prompt_type="panoptic")
    colour = labels_to_rgb(labels, build_palette(4))
    with pytest.raises(ValueError, match="not a mix"):
        tiny_seggpt_predictor.set_prompts([image, image], [labels, colour])


# ---------------------------------------------------------------- behaviour


def test_batch_predict_equals_one_by_one(tiny_seggpt_predictor):
    rng = np.random.default_rng(1)
    images, labels = zip(*[_prompt(rng) for _ in range(2)], strict=True)
    tiny_seggpt_predictor.set_prompts(list(images), list(labels))
    stack = rng.integers(0, 4000, (5, 24, 40), dtype=np.uint16)
    limits = (0, 4000)
    single = [tiny_seggpt_predictor.predict(s, contrast_limits=limits) for s in stack]
    batched, distances = tiny_seggpt_predictor.predict_batch(
        stack, batch_size=2, contrast_limits=limits, return_confidence=True
    )
    assert len(batched) == len(distances) == 5
    for one, many in zip(single, batched, strict=True):
        assert many.shape == (24, 40)
        np.testing.assert_array_equal(one, many)
    assert any((batched[0] != b).any() for b in batched[1:])  # the slices differ
    indices = [index for index, *_ in tiny_seggpt_predictor.iter_predictions(stack, batch_size=3)]
    assert indices == [0, 1, 2, 3, 4]


def test_default_batch_size_and_bad_batch_size(tiny_seggpt_predictor):
    rng = np.random.default_rng(2)
    tiny_seggpt_predictor.set_prompts(*map(list, zip(_prompt(rng), strict=True)))
    assert tiny_seggpt_predictor.default_batch_size() >= 1
    with pytest.raises(ValueError, match="batch_size"):
        tiny_seggpt_predictor.predict_batch([np.zeros((8, 8), np.uint8)], batch_size=0)


def test_num_labels_default_is_largest_label_and_palette_follows(tiny_seggpt_predictor):
    rng = np.random.default_rng(3)
    image, labels = _prompt(rng, labels=6)
    tiny_seggpt_predictor.set_prompts([image], [labels])
    assert tiny_seggpt_predictor.num_labels == labels.max()
    np.testing.assert_array_equal(tiny_seggpt_predictor.palette, build_palette(int(labels.max())))
    result = tiny_seggpt_predictor.predict(image)
    assert result.min() >= 0 and result.max() <= labels.max()


def test_colour_masks_without_num_labels_use_their_own_colours(tiny_seggpt_predictor):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10]], np.uint8)
    mask = colours[rng.integers(0, 3, (32, 32))]
    tiny_seggpt_predictor.set_prompts([image], [mask])
    np.testing.assert_array_equal(tiny_seggpt_predictor.palette, colours[[0, 2, 1]])  # sorted
    result = tiny_seggpt_predictor.predict(image)
    assert set(np.unique(result)) <= {0, 1, 2}


def test_bool_and_uint16_labels_and_rgba_image(tiny_seggpt_predictor):
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    tiny_seggpt_predictor.set_prompts([rgba], [rng.random((32, 32)) > 0.5])
    assert tiny_seggpt_predictor.num_labels == 1
    tiny_seggpt_predictor.set_prompts([rgba], [rng.integers(0, 3, (32, 32)).astype(np.uint16)])
    assert tiny_seggpt_predictor.predict(rgba[..., :3]).shape == (32, 32)


def test_reset_prompts(tiny_seggpt_predictor):
    rng = np.random.default_rng(6)
    tiny_seggpt_predictor.set_prompts(*map(list, zip(_prompt(rng), strict=True)))
    assert tiny_seggpt_predictor.has_prompts
    tiny_seggpt_predictor.reset_prompts()
    with pytest.raises(RuntimeError):
        tiny_seggpt_predictor.predict(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("num_labels", [3, 63, 64, 700])  # direct below 64 colours, else matmul
def test_nearest_palette_colour_matches_brute_force(num_labels):
    import torch

    from napari_segany.seggpt.predictor import nearest_palette_colour

    rng = np.random.default_rng(num_labels)
    palette = build_palette(num_labels)
    colours = rng.uniform(0, 255, (40, 30, 3)).astype(np.float32)
    colours[:5] = palette[rng.integers(0, num_labels + 1, (5, 30))]  # exact hits (ties at 0)
    expected, distance = rgb_to_labels(colours, palette)
    labels, squared = nearest_palette_colour(
        torch.from_numpy(colours), torch.from_numpy(palette.astype(np.float32)), pixel_chunk=256
    )
    agree = labels.numpy() == expected
    assert agree.mean() > 0.999 and agree[:5].all()
    np.testing.assert_allclose(np.sqrt(squared.numpy())[agree], distance[agree], atol=1e-3)
