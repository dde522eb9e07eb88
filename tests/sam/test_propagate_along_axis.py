"""Propagation along one axis of a stack, with a fake segmenter (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.jobs import run_to_completion
from napari_segany.sam.interactive_session import ObjectPrediction
from napari_segany.sam.propagation import PropagationSettings, propagate_along_axis


def square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_propagation_takes_the_best_scoring_candidate_even_when_it_is_not_first():
    shape = (32, 32)
    best = square(shape, 8, 8, 10)
    worse = square(shape, 0, 20, 6)
    seen = []

    def segment_at(key, prompts):
        seen.append(key)
        masks = np.stack([worse, best, worse])
        return ObjectPrediction(masks, np.array([0.2, 0.9, 0.6]), np.zeros((3, 8, 8)))

    job = propagate_along_axis(
        segment_at, (2, 5), (1, 2), best, PropagationSettings(direction="forward", axis=1)
    )
    result = run_to_completion(job)
    assert seen == [(1, 3), (1, 4)]  # along axis 1 only, the other index kept
    assert set(result.masks) == {(1, 3), (1, 4)}
    for mask in result.masks.values():
        np.testing.assert_array_equal(mask, best)


def test_propagation_axis_and_key_errors():
    mask = square((8, 8), 2, 2, 3)
    with pytest.raises(ValueError, match="not a stack axis"):
        run_to_completion(
            propagate_along_axis(lambda *_: None, (3,), (1,), mask, PropagationSettings(axis=2))
        )
    with pytest.raises(ValueError, match="2D"):
        PropagationSettings().resolved_axis(0)
    assert PropagationSettings(axis=-1).resolved_axis(2) == 1
    assert PropagationSettings().resolved_axis(3) == 2
