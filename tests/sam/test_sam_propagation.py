"""propagate_through_stack on a synthetic stack with a predictor that segments bright blobs."""

import numpy as np
import pytest
from scipy import ndimage

from napari_segany.jobs import run_collecting
from napari_segany.sam.interactive_session import ObjectPrediction, SamPrompts
from napari_segany.sam.propagation import prompts_from_mask, propagate_through_stack


def blob_stack(n=14, size=40):
    """A ball-like blob on slices 3..9 (radius growing then shrinking) and a second blob far away."""
    stack = np.zeros((n, size, size), dtype=np.float32)
    rr, cc = np.indices((size, size))
    for z in range(3, 10):
        radius = 4 + 6 * np.sin(np.pi * (z - 2.5) / 7.5)
        centre = (15 + (z - 6), 15)  # drifts one row per slice
        stack[z][(rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2] = 1.0
    stack[:, 32:38, 32:38] = 1.0  # another object on every slice
    return stack


class BlobSegmenter:
    """segment_slice(i, prompts): the bright components under the positive points (box-clipped)."""

    def __init__(self, stack):
        self.stack = stack
        self.calls = []

    def __call__(self, index, prompts: SamPrompts) -> ObjectPrediction:
        self.calls.append(index)
        labels, _ = ndimage.label(self.stack[index] > 0.5)
        mask = np.zeros(labels.shape, bool)
        for (r, c), kind in zip(prompts.points_rc.astype(int), prompts.point_labels, strict=True):
            if kind == 1 and labels[r, c]:
                mask |= labels == labels[r, c]
        if prompts.boxes_corners:
            low, high = np.min(prompts.boxes_corners[0], 0), np.max(prompts.boxes_corners[0], 0)
            rr, cc = np.indices(mask.shape)
            # objects grow: allow a few pixels outside the box, like SAM does
            mask &= (
                (rr >= low[0] - 4) & (rr <= high[0] + 4) & (cc >= low[1] - 4) & (cc <= high[1] + 4)
            )
        masks = np.stack([mask, np.zeros_like(mask), ndimage.binary_dilation(mask)])
        return ObjectPrediction(masks, np.array([0.95, 0.1, 0.6]), np.zeros((3, 8, 8)))


def drain(job):
    return run_collecting(job)


def test_propagates_both_ways_until_the_object_disappears():
    stack = blob_stack()
    start = stack[6] > 0.5
    start[32:38, 32:38] = False
    segmenter = BlobSegmenter(stack)
    steps, result = drain(propagate_through_stack(segmenter, len(stack), 6, start, min_score=0.5))
    assert sorted(result.masks) == [3, 4, 5, 7, 8, 9]
    for z, mask in result.masks.items():
        expected = stack[z] > 0.5
        expected[32:38, 32:38] = False
        np.testing.assert_array_equal(mask, expected)
    assert "stopped at slice 10" in result.stop_reasons["forward"]
    assert "stopped at slice 2" in result.stop_reasons["backward"]
    # the other object is never picked up, the empty slices are visited once and stop
    assert sorted(segmenter.calls) == [2, 3, 4, 5, 7, 8, 9, 10]
    dones = [s.done for s in steps]
    assert dones == sorted(dones) and steps[-1].done == steps[-1].total == 13
    assert [s.slice_index for s in steps if s.mask is None] == [10, 2]


def test_forward_only_and_max_steps():
    stack = blob_stack()
    start = (stack[6] > 0.5) & ~np.pad(np.ones((6, 6), bool), ((32, 2), (32, 2)))
    _, result = drain(
        propagate_through_stack(
            BlobSegmenter(stack), len(stack), 6, start, direction="forward", max_steps=2
        )
    )
    assert sorted(result.masks) == [7, 8]
    assert result.stop_reasons == {"forward": "reached the end of the stack"}


def test_stops_when_the_mask_jumps_to_another_object():
    stack = np.zeros((3, 20, 20), np.float32)
    stack[0, 2:6, 2:6] = 1
    stack[1, 12:16, 12:16] = 1  # nothing where the object was: only a far object

    def jumping(index, prompts):
        mask = stack[index] > 0.5
        return ObjectPrediction(mask[None], np.array([0.99]), np.zeros((1, 4, 4)))

    _, result = drain(propagate_through_stack(jumping, 3, 0, stack[0] > 0.5, min_overlap=0.1))
    assert result.masks == {}
    assert "overlaps" in result.stop_reasons["forward"]


def test_low_score_stops():
    stack = blob_stack()
    start = stack[6] > 0.5

    def unsure(index, prompts):
        return ObjectPrediction((stack[index] > 0.5)[None], np.array([0.2]), np.zeros((1, 4, 4)))

    _, result = drain(propagate_through_stack(unsure, len(stack), 6, start, min_score=0.5))
    assert result.masks == {}
    assert "IoU 0.20" in result.stop_reasons["forward"]


def test_prompts_from_mask_box_and_deep_points():
    mask = np.zeros((30, 30), bool)
    mask[5:15, 8:28] = True
    prompts = prompts_from_mask(mask, n_points=3)
    np.testing.assert_allclose(prompts.boxes_corners[0], [[4.5, 7.5], [14.5, 27.5]])
    assert prompts.points_rc.shape == (3, 2)
    assert np.all(prompts.point_labels == 1)
    rows, cols = prompts.points_rc.astype(int).T
    assert mask[rows, cols].all()
    assert len({tuple(p) for p in prompts.points_rc}) == 3
    with_mask = prompts_from_mask(mask, n_points=0, include_mask=True, box_margin=100)
    assert with_mask.points_rc.shape == (0, 2) and with_mask.mask is mask
    np.testing.assert_allclose(with_mask.boxes_corners[0], [[-0.5, -0.5], [29.5, 29.5]])


def test_bad_arguments():
    mask = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="outside"):
        next(propagate_through_stack(lambda i, p: None, 3, 5, mask))
    with pytest.raises(ValueError, match="empty"):
        next(propagate_through_stack(lambda i, p: None, 3, 1, np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="direction"):
        next(propagate_through_stack(lambda i, p: None, 3, 1, mask, direction="up"))
