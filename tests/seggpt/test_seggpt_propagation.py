"""Propagating painted labels through stacks (pure numpy tier, no GUI).

Most tests use small scripted predictors whose answers make each rule observable (which prompts
were given, whether the previous frame was one); the last ones run the real tiny SegGPT.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.seggpt.propagation import (
    PropagationSettings,
    SlicePropagation,
    StackLayout,
    choose_prompts,
    compact_labels,
    labelled_slices,
    merge_labels,
    segment_stack_with_seggpt,
    select_slices,
    stack_contrast_limits,
    video_order,
)


class CopyLastPrompt:
    """Predicts the labels of its last prompt, shifted ``shift`` pixels down (records every call)."""

    def __init__(self, shift: int = 0, distance: np.ndarray | None = None) -> None:
        self.shift = shift
        self.distance = distance
        self.prompt_calls: list[tuple[list[np.ndarray], list[np.ndarray], int]] = []
        self.predicted: list[np.ndarray] = []

    def set_prompts(self, images, labels, num_labels=None):
        for image, label in zip(images, labels, strict=True):
            assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        self.prompt_calls.append((list(images), list(labels), num_labels))

    def predict(self, image, *, return_confidence=False):
        assert image.dtype == np.uint8 and image.ndim == 3
        self.predicted.append(image)
        labels = np.roll(self.prompt_calls[-1][1][-1], self.shift, axis=0)
        if return_confidence:
            return labels, self.distance
        return labels


def painted_stack(depth=6, size=16, painted=(0,), ids=(7, 42)):
    """A uint16 stack and labels painted on some slices with two objects of the given ids."""
    image = (np.arange(depth * size * size).reshape(depth, size, size) * 13 % 4000).astype(
        np.uint16
    )
    labels = np.zeros((depth, size, size), np.int32)
    for z in painted:
        labels[z, 2:6, 2:6] = ids[0]
        labels[z, 9:13, 8:14] = ids[1]
    return image, labels


def test_stack_layout_guesses_rgb_like_napari():
    assert StackLayout.of((5, 32, 40)).leading_shape == (5,)
    rgb = StackLayout.of((5, 32, 40, 3))
    assert rgb.rgb and rgb.leading_shape == (5,) and rgb.label_shape == (5, 32, 40)
    assert StackLayout.of((32, 40)).all_keys() == [()]
    assert StackLayout.of((2, 3, 8, 8)).all_keys()[:2] == [(0, 0), (0, 1)]


def test_select_slices_all_int_range_keys_and_exclude():
    assert select_slices((3,), "all") == [(0,), (1,), (2,)]
    assert select_slices((3,), "all", exclude=[(1,)]) == [(0,), (2,)]
    assert select_slices((4, 2), 1) == [(1, 0), (1, 1)]
    assert select_slices((5,), range(1, 3)) == [(1,), (2,)]
    assert select_slices((5,), [(4,), (1,), (4,)]) == [(4,), (1,)]
    assert select_slices((), "all") == [()]
    with pytest.raises(ValueError, match="not a slice"):
        select_slices((5,), [(5,)])
    with pytest.raises(ValueError, match="outside"):
        select_slices((5,), range(7, 9))


def test_labelled_slices_finds_painted_slices_only():
    _, labels = painted_stack(painted=(1, 4))
    assert labelled_slices(labels, 1) == [(1,), (4,)]
    assert labelled_slices(labels[1], 0) == [()]
    assert labelled_slices(np.zeros((4, 4)), 0) == []


def test_choose_prompts_nearest_or_even_spread():
    keys = [(0,), (3,), (6,), (9,), (12,)]
    assert choose_prompts(keys, (7,), 2, nearest=True) == ((6,), (9,))
    assert choose_prompts(keys, (7,), 3, nearest=False) == ((0,), (6,), (12,))
    assert choose_prompts(keys[:2], (7,), 5, nearest=True) == ((0,), (3,))


def test_video_order_runs_outwards_from_painted_frames():
    plan = video_order([(t,) for t in range(8) if t != 3], [(3,)], time_axis=0)
    assert plan == [
        ((2,), (3,)),
        ((4,), (3,)),
        ((1,), (2,)),
        ((5,), (4,)),
        ((0,), (1,)),
        ((6,), (5,)),
        ((7,), (6,)),
    ]
    # Without painted frames: forwards in time; in 4D (T, Z) each Z is its own track.
    assert video_order([(1,), (0,), (2,)], [], 0) == [((0,), None), ((1,), (0,)), ((2,), (1,))]
    plan_4d = video_order([(0, 1), (1, 1), (1, 0)], [(0, 0)], time_axis=0)
    assert ((1, 0), (0, 0)) in plan_4d and ((1, 1), (0, 1)) in plan_4d


def test_compact_labels_round_trip_keeps_arbitrary_ids():
    labels = np.array([[0, 250, 3], [17, 17, 0]])
    ids = np.array([3, 17, 250])
    compact = compact_labels(labels, ids)
    assert compact.tolist() == [[0, 3, 1], [2, 2, 0]]
    assert np.concatenate([[0], ids])[compact].tolist() == labels.tolist()


def test_merge_keeps_existing_labels_unless_overwrite():
    existing = np.array([[0, 5], [0, 5]], np.uint16)
    predicted = np.array([[1, 1], [0, 2]])
    assert merge_labels(existing, predicted).tolist() == [[1, 5], [0, 5]]
    assert merge_labels(existing, predicted).dtype == np.uint16
    assert merge_labels(existing, predicted, overwrite=True).tolist() == [[1, 1], [0, 2]]


def test_prompt_slices_are_never_targets_and_label_ids_survive():
    image, labels = painted_stack(depth=5, painted=(1, 3))
    predictor = CopyLastPrompt()
    result = segment_stack_with_seggpt(predictor, image, labels)
    assert len(predictor.predicted) == 3  # slices 0, 2, 4 only
    np.testing.assert_array_equal(result[1], labels[1])
    np.testing.assert_array_equal(result[3], labels[3])
    assert set(np.unique(result[0])) == {0, 7, 42}
    # The model sees compact ids 1..2 and num_labels=2, whatever ids the user painted.
    _, prompt_labels, num_labels = predictor.prompt_calls[0]
    assert num_labels == 2 and set(np.unique(prompt_labels[0])) == {0, 1, 2}


def test_results_are_yielded_one_slice_at_a_time_and_can_stop_early():
    image, labels = painted_stack(depth=6, painted=(0,))
    plan = SlicePropagation(
        image, image, labels, targets=select_slices((6,)), prompts_in_target=True
    )
    assert len(plan) == 5 and (0,) not in plan.targets
    predictor = CopyLastPrompt()
    run = plan.run(predictor)
    key, first = next(run)
    assert key == (1,) and first.shape == (16, 16) and first.dtype == np.int32
    assert len(predictor.predicted) == 1  # nothing computed ahead of the consumer
    run.close()


def test_max_prompts_limits_the_ensemble_and_picks_nearest():
    image, labels = painted_stack(depth=10, painted=(0, 2, 8, 9))
    predictor = CopyLastPrompt()
    plan = SlicePropagation(
        image,
        image,
        labels,
        targets=[(7,)],
        prompts_in_target=True,
        settings=PropagationSettings(max_prompts=2),
    )
    list(plan.run(predictor))
    images, _, _ = predictor.prompt_calls[0]
    assert len(images) == 2
    # Nearest to slice 7 are slices 8 and 9: their images were the prompts.
    from napari_segany.image_conversion import to_uint8_rgb

    limits = plan.prompt_contrast_limits
    np.testing.assert_array_equal(images[0], to_uint8_rgb(image[8], limits))
    np.testing.assert_array_equal(images[1], to_uint8_rgb(image[9], limits))


def test_video_mode_feeds_each_frame_the_previous_prediction():
    image, labels = painted_stack(depth=6, painted=(2,), ids=(1, 2))
    settings = PropagationSettings(use_previous_frame=True)
    result = segment_stack_with_seggpt(CopyLastPrompt(shift=1), image, labels, settings=settings)
    # Each frame copies its neighbour's prediction shifted by one row, so the shift grows with the
    # distance to the painted frame 2; without the previous frame every shift would be 1.
    for t in range(6):
        np.testing.assert_array_equal(result[t], np.roll(labels[2], abs(t - 2), axis=0))
    without = segment_stack_with_seggpt(CopyLastPrompt(shift=1), image, labels)
    np.testing.assert_array_equal(without[5], np.roll(labels[2], 1, axis=0))


def test_uncertain_pixels_are_left_unlabelled():
    image, labels = painted_stack(depth=2, painted=(0,))
    distance = np.zeros((16, 16), np.float32)
    distance[:, :8] = 100.0
    settings = PropagationSettings(uncertainty_threshold=50.0)
    result = segment_stack_with_seggpt(
        CopyLastPrompt(distance=distance), image, labels, settings=settings
    )
    assert not result[1][:, :8].any()
    np.testing.assert_array_equal(result[1][:, 8:], labels[0][:, 8:])


def test_reference_image_prompts_and_rgb_target():
    reference, ref_labels = painted_stack(depth=1, painted=(0,))
    target = np.random.default_rng(0).integers(0, 255, (3, 20, 24, 3), dtype=np.uint8)
    predictor = CopyLastPrompt()
    plan = SlicePropagation(target, reference[0], ref_labels[0], targets=select_slices((3,)))
    results = dict(plan.run(predictor))
    assert sorted(results) == [(0,), (1,), (2,)]
    assert predictor.predicted[0].shape == (20, 24, 3)


@pytest.mark.parametrize(
    ("prompt_images", "prompt_labels", "match"),
    [
        (np.zeros((4, 16, 16)), np.zeros((4, 16, 16), np.int32), "prompt labels are empty"),
        (np.zeros((4, 16, 16)), np.ones((4, 16, 15), np.int32), "do not match"),
        (np.zeros((4, 16, 16)), np.ones((3, 16, 16), np.int32), "do not match"),
        (np.zeros((16, 16)), np.ones((16, 16), np.float32), "must be integers"),
        (np.zeros((16, 16)), -np.ones((16, 16), np.int32), "must not be negative"),
    ],
)
def test_bad_prompts_raise_before_any_prediction(prompt_images, prompt_labels, match):
    with pytest.raises(ValueError, match=match):
        SlicePropagation(np.zeros((4, 16, 16)), prompt_images, prompt_labels, targets=[(0,)])


def test_chosen_prompt_slice_without_labels_is_an_error():
    image, labels = painted_stack(depth=4, painted=(0,))
    with pytest.raises(ValueError, match=r"\[\(2,\)\] have no labels"):
        SlicePropagation(image, image, labels, targets=[(1,)], prompt_slices=[(2,)])


def test_real_tiny_seggpt_fills_a_stack_around_the_painted_slice(tiny_seggpt_predictor):
    from napari_segany._napari.sample_data import blobs_stack

    image, truth = blobs_stack((5, 40, 48))
    painted = np.zeros_like(truth)
    painted[2] = truth[2] * 10  # ids 10..40: renumbered for the model, restored in the result
    result = segment_stack_with_seggpt(tiny_seggpt_predictor, image, painted)
    assert result.shape == truth.shape and result.dtype == np.int32
    np.testing.assert_array_equal(result[2], painted[2])
    assert set(np.unique(result)) <= {0, 10, 20, 30, 40}
    assert all(result[z].any() for z in (0, 1, 3, 4))


def test_real_tiny_seggpt_batches_give_the_same_result_as_one_by_one(tiny_seggpt_predictor):
    image, labels = painted_stack(depth=5, painted=(0,))

    class OneByOne:
        def __init__(self, inner):
            self.inner = inner

        def set_prompts(self, *args, **kwargs):
            self.inner.set_prompts(*args, **kwargs)

        def predict(self, image, *, return_confidence=False):
            return self.inner.predict(image, return_confidence=return_confidence)

    settings = PropagationSettings(uncertainty_threshold=30.0)
    batched = segment_stack_with_seggpt(tiny_seggpt_predictor, image, labels, settings=settings)
    single = segment_stack_with_seggpt(
        OneByOne(tiny_seggpt_predictor), image, labels, settings=settings
    )
    np.testing.assert_array_equal(batched, single)


def test_propagation_imports_no_gui():
    import subprocess
    import sys

    code = "import sys, napari_segany.seggpt.propagation; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "napari_segany.seggpt.slice_planning" in loaded
    assert not {"napari", "qtpy", "PyQt5", "magicgui"} & loaded


def test_contrast_limits_drive_the_scaling_of_targets_and_prompts():
    image = np.full((2, 8, 8), 500, np.uint16)
    labels = np.zeros((2, 8, 8), np.int32)
    labels[0, 2:5, 2:5] = 1
    predictor = CopyLastPrompt()
    plan = SlicePropagation(
        image,
        image,
        labels,
        targets=[(1,)],
        prompts_in_target=True,
        target_contrast_limits=(0, 1000),
        prompt_contrast_limits=(500, 1500),
    )
    list(plan.run(predictor))
    assert (predictor.predicted[0] == 128).all()  # 500 in (0, 1000)
    assert (predictor.prompt_calls[0][0][0] == 0).all()  # 500 in (500, 1500)


def test_batch_size_setting_reaches_the_predictor(tiny_seggpt_predictor):
    image, labels = painted_stack(depth=6, painted=(0,))
    sizes = []
    original = tiny_seggpt_predictor.iter_predictions

    def spy(images, **kwargs):
        sizes.append(kwargs.get("batch_size"))
        return original(images, **kwargs)

    tiny_seggpt_predictor.iter_predictions = spy
    segment_stack_with_seggpt(
        tiny_seggpt_predictor, image, labels, settings=PropagationSettings(batch_size=1)
    )
    assert sizes == [1]
    with pytest.raises(ValueError, match="batch_size"):
        PropagationSettings(batch_size=0)


def test_label_ids_beyond_int32_survive():
    image, labels = painted_stack(depth=3, painted=(0,), ids=(5, 6))
    labels = labels.astype(np.int64)
    labels[labels == 6] = 2**40
    result = segment_stack_with_seggpt(CopyLastPrompt(), image, labels)
    assert result.dtype == np.int64
    assert set(np.unique(result[1])) == {0, 5, 2**40}


def test_stack_wide_contrast_limits_scale_every_slice_alike():
    image = np.zeros((3, 16, 16), np.uint16)
    image[0] = 1000  # a bright slice and a dark one: per-slice stretching would hide that
    image[1] = 100
    image[2, :, 8:] = 1000
    labels = np.zeros((3, 16, 16), np.int32)
    labels[2, :4, :4] = 1
    plan = SlicePropagation(image, image, labels, targets=[(0,), (1,)], prompts_in_target=True)
    assert plan.target_contrast_limits == plan.prompt_contrast_limits
    predictor = CopyLastPrompt()
    list(plan.run(predictor))
    bright, dark = predictor.predicted
    assert bright.min() == 255 and dark.max() < 50
    assert stack_contrast_limits(image.astype(np.uint8), StackLayout.of(image.shape)) is None
    unit = np.linspace(0, 1, 3 * 16 * 16).reshape(3, 16, 16)
    assert stack_contrast_limits(unit, StackLayout.of(unit.shape)) == (0.0, 1.0)
