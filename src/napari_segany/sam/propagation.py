"""Carrying one segmented object through the neighbouring slices of a stack.

From an object's mask on one slice, :func:`propagate_through_stack` segments the next slice with
prompts derived from the previous slice's mask (its bounding box and a few points deep inside it,
optionally the mask itself), and goes on until the object disappears (empty or tiny mask, low
predicted IoU, or a mask that no longer overlaps the previous one) or the stack ends, in one or
both directions. It is a generator (STYLE rule 8): it yields one :class:`PropagationStep` per
slice, so a GUI can show the result slice by slice and cancel between slices.

The segmentation itself is a callable ``segment_slice(index, prompts) -> ObjectPrediction``, so
the same logic runs on an :class:`~napari_segany.sam.interactive_session.InteractiveSamSession`
(with its embedding cache, :meth:`~InteractiveSamSession.segment_slice`) or on a plain predictor
(:func:`predictor_slice_segmenter`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segany.sam.interactive_session import ObjectPrediction, SamPrompts

SliceSegmenter = Callable[[int, SamPrompts], ObjectPrediction]
"""``segment_slice(index, prompts) -> ObjectPrediction`` for the 2D slice ``index`` of a stack."""


@dataclass
class PropagationStep:
    """Progress of a propagation: the mask found on one slice.

    Attributes
    ----------
    done, total
        Slices visited so far and the most there can be (progress).
    slice_index
        Index of the slice along the propagation axis.
    mask
        (H, W) bool mask on that slice, or ``None`` when the object stopped there.
    score
        SAM's predicted IoU for the mask.
    direction
        ``+1`` (increasing indices) or ``-1``.
    key
        Full slice key (leading-axis indices) of the slice, set by :func:`propagate_along_axis`.
    """

    done: int
    total: int
    slice_index: int
    mask: np.ndarray | None
    score: float
    direction: int
    key: tuple[int, ...] = ()


@dataclass
class PropagationResult:
    """Everything a propagation found.

    Attributes
    ----------
    masks
        Slice index (full slice key from :func:`propagate_along_axis`) → (H, W) bool mask, for
        every slice the object reached (the start slice excluded).
    stop_reasons
        ``"forward"`` / ``"backward"`` → why that direction stopped.
    """

    masks: dict[Any, np.ndarray] = field(default_factory=dict)
    stop_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PropagationSettings:
    """Options of a SAM propagation (the widget's *Propagate* and the scripting function).

    Attributes
    ----------
    direction
        ``"both"``, ``"forward"`` (increasing indices) or ``"backward"``.
    min_score, min_area, min_overlap
        Stop rules of :func:`propagate_through_stack`.
    use_mask_prompt
        Also give the previous slice's mask as SAM's mask prompt.
    n_points, box_margin
        How the previous mask becomes prompts (:func:`prompts_from_mask`).
    axis
        The stack axis to walk along, counted among the image's leading (non-plane) axes: for a
        T×Z×Y×X image 0 is T and 1 is Z; ``None`` means the last one (Z).
    max_steps
        Most slices to visit in each direction (``None``: until the stack ends).
    """

    direction: str = "both"
    min_score: float = 0.5
    min_area: int = 10
    use_mask_prompt: bool = False
    axis: int | None = None
    n_points: int = 3
    box_margin: float = 2.0
    min_overlap: float = 0.1
    max_steps: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`propagate_through_stack` (``axis`` is not one of them)."""
        return {
            "direction": self.direction,
            "n_points": self.n_points,
            "box_margin": self.box_margin,
            "use_mask_prompt": self.use_mask_prompt,
            "min_area": self.min_area,
            "min_score": self.min_score,
            "min_overlap": self.min_overlap,
            "max_steps": self.max_steps,
        }

    def resolved_axis(self, n_leading: int) -> int:
        """The axis index among ``n_leading`` leading axes (``ValueError`` if there is none)."""
        if n_leading <= 0:
            raise ValueError("propagation needs a stack (3D or more); this image is 2D")
        axis = n_leading - 1 if self.axis is None else int(self.axis)
        if axis < 0:
            axis += n_leading
        if not 0 <= axis < n_leading:
            raise ValueError(
                f"axis {self.axis} is not a stack axis of this image (it has {n_leading})"
            )
        return axis


KeySegmenter = Callable[[tuple[int, ...], SamPrompts], ObjectPrediction]
"""``segment_at(slice_key, prompts) -> ObjectPrediction`` for any 2D slice of a stack."""


def propagate_along_axis(
    segment_at: KeySegmenter,
    stack_shape: tuple[int, ...],
    start_key: tuple[int, ...],
    start_mask: np.ndarray,
    settings: PropagationSettings | None = None,
) -> Generator[PropagationStep, None, PropagationResult]:
    """Carry an object from slice ``start_key`` along one leading axis of a stack.

    Parameters
    ----------
    segment_at
        ``segment_at(slice_key, prompts)`` on full slice keys (e.g.
        :meth:`~napari_segany.sam.interactive_session.InteractiveSamSession.key_segmenter`).
    stack_shape
        Sizes of the leading axes, e.g. ``(T, Z)`` of a T×Z×Y×X image.
    start_key
        Slice key the object was segmented on.
    start_mask
        (H, W) bool mask of the object there.
    settings
        Stop rules, direction and the axis (default: the last leading axis).

    Yields
    ------
    PropagationStep
        As :func:`propagate_through_stack`, with ``key`` set to the full slice key.

    Returns
    -------
    PropagationResult
        ``masks`` keyed by full slice keys.
    """
    settings = settings or PropagationSettings()
    stack_shape = tuple(int(n) for n in stack_shape)
    axis = settings.resolved_axis(len(stack_shape))
    start_key = tuple(int(i) for i in start_key)
    if len(start_key) != len(stack_shape):
        raise ValueError(f"slice key {start_key} does not fit a stack of shape {stack_shape}")

    def key_at(index: int) -> tuple[int, ...]:
        key = list(start_key)
        key[axis] = int(index)
        return tuple(key)

    job = propagate_through_stack(
        lambda i, prompts: segment_at(key_at(i), prompts),
        stack_shape[axis],
        start_key[axis],
        start_mask,
        **settings.as_kwargs(),
    )
    while True:
        try:
            step = next(job)
        except StopIteration as stop:
            result = stop.value
            break
        step.key = key_at(step.slice_index)
        yield step
    return PropagationResult(
        {key_at(i): mask for i, mask in sorted(result.masks.items())}, result.stop_reasons
    )


def prompts_from_mask(
    mask: np.ndarray, *, n_points: int = 3, box_margin: float = 0.0, include_mask: bool = False
) -> SamPrompts:
    """Prompts that describe an object's mask to SAM on the next slice.

    Parameters
    ----------
    mask
        (H, W) bool mask, not empty.
    n_points
        Positive points to place, each at the deepest pixel (largest distance to the background)
        not yet near a chosen point; 0 for a box-only prompt.
    box_margin
        Pixels added on every side of the mask's bounding box (objects grow between slices).
    include_mask
        Also pass the mask itself as SAM's mask prompt.

    Returns
    -------
    SamPrompts
        ``points_rc`` (n, 2) ``(row, col)``, ``point_labels`` all 1, one box whose corners are
        the bounding box's pixel edges, and the mask when ``include_mask``.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("prompts need a non-empty (H, W) mask")
    rows, cols = np.nonzero(mask)
    low = np.array([rows.min(), cols.min()], dtype=np.float64) - 0.5 - box_margin
    high = np.array([rows.max(), cols.max()], dtype=np.float64) + 0.5 + box_margin
    low = np.maximum(low, -0.5)
    high = np.minimum(high, np.array(mask.shape, dtype=np.float64) - 0.5)
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    grid_r, grid_c = np.indices(mask.shape)
    points = []
    for _ in range(n_points):
        index = int(np.argmax(depth))
        if depth.flat[index] <= 0:
            break
        r, c = divmod(index, mask.shape[1])
        points.append((r, c))
        radius = max(float(depth[r, c]), 1.0)
        depth[(grid_r - r) ** 2 + (grid_c - c) ** 2 <= radius**2] = 0
    points_rc = np.array(points, dtype=np.float64).reshape(-1, 2)
    return SamPrompts(
        points_rc=points_rc,
        point_labels=np.ones(len(points_rc), dtype=np.int64),
        boxes_corners=[np.stack([low, high])],
        mask=mask if include_mask else None,
    )


def propagate_through_stack(
    segment_slice: SliceSegmenter,
    n_slices: int,
    start_index: int,
    start_mask: np.ndarray,
    *,
    direction: str = "both",
    n_points: int = 3,
    box_margin: float = 2.0,
    use_mask_prompt: bool = False,
    min_area: int = 10,
    min_score: float = 0.5,
    min_overlap: float = 0.1,
    max_steps: int | None = None,
) -> Generator[PropagationStep, None, PropagationResult]:
    """Segment an object on the slices next to ``start_index``, one slice after the other.

    Parameters
    ----------
    segment_slice
        ``segment_slice(index, prompts) -> ObjectPrediction`` (see module docstring).
    n_slices
        Length of the propagation axis.
    start_index
        Slice the object was segmented on.
    start_mask
        (H, W) bool mask of the object on ``start_index``.
    direction
        ``"both"``, ``"forward"`` (increasing indices) or ``"backward"``.
    n_points, box_margin, use_mask_prompt
        How the previous mask becomes prompts (:func:`prompts_from_mask`).
    min_area
        Stop when the mask has fewer pixels (the object disappeared).
    min_score
        Stop when SAM's predicted IoU of the best candidate is lower.
    min_overlap
        Stop when less than this fraction of the new mask overlaps the previous mask (SAM moved
        on to another object).
    max_steps
        Most slices to visit in each direction (``None``: until the stack ends).

    Yields
    ------
    PropagationStep
        One per visited slice (``mask`` is ``None`` on the slice where a direction stopped).

    Returns
    -------
    PropagationResult
    """
    if not 0 <= start_index < n_slices:
        raise ValueError(f"start slice {start_index} is outside the stack (0..{n_slices - 1})")
    start_mask = np.asarray(start_mask, dtype=bool)
    if not start_mask.any():
        raise ValueError(f"the object is empty on its start slice {start_index}")
    steps = {"forward": [1], "backward": [-1], "both": [1, -1]}.get(direction)
    if steps is None:
        raise ValueError(f"direction must be 'both', 'forward' or 'backward', got {direction!r}")
    total = sum(_slices_ahead(n_slices, start_index, step, max_steps) for step in steps)
    result = PropagationResult()
    done = 0
    for step in steps:
        name = "forward" if step > 0 else "backward"
        previous = start_mask
        remaining = _slices_ahead(n_slices, start_index, step, max_steps)
        index = start_index
        reason = "reached the end of the stack"
        for _ in range(remaining):
            index += step
            prompts = prompts_from_mask(
                previous, n_points=n_points, box_margin=box_margin, include_mask=use_mask_prompt
            )
            prediction = segment_slice(index, prompts)
            best = int(prediction.ranked()[0])
            mask = np.asarray(prediction.masks[best], dtype=bool)
            score = float(prediction.scores[best])
            done += 1
            reason = _stop_reason(mask, previous, score, min_area, min_score, min_overlap)
            if reason:
                # the slices this direction no longer visits count as done for progress
                done += remaining - (abs(index - start_index))
                yield PropagationStep(done, total, index, None, score, step)
                reason = f"stopped at slice {index}: {reason}"
                break
            result.masks[index] = mask
            yield PropagationStep(done, total, index, mask, score, step)
            previous = mask
        result.stop_reasons[name] = reason or "reached the end of the stack"
    return result


def _slices_ahead(n_slices: int, start: int, step: int, max_steps: int | None) -> int:
    ahead = n_slices - 1 - start if step > 0 else start
    return ahead if max_steps is None else min(ahead, max_steps)


def _stop_reason(
    mask: np.ndarray,
    previous: np.ndarray,
    score: float,
    min_area: int,
    min_score: float,
    min_overlap: float,
) -> str:
    area = int(mask.sum())
    if area < max(min_area, 1):
        return f"the mask has {area} pixels (fewer than {max(min_area, 1)})"
    if score < min_score:
        return f"predicted IoU {score:.2f} is below {min_score:.2f}"
    overlap = float(np.logical_and(mask, previous).sum()) / area
    if overlap < min_overlap:
        return f"only {overlap:.0%} of the mask overlaps the previous slice's"
    return ""


def predictor_slice_segmenter(
    predictor: Any,
    read_slice: Callable[[int], np.ndarray],
    contrast_limits: tuple[float, float] | None = None,
) -> SliceSegmenter:
    """A ``segment_slice`` for :func:`propagate_through_stack` from a plain ``SamPredictor``.

    Each call runs ``predictor.set_image`` on ``read_slice(index)`` (no cache), then decodes one
    object from the prompts.
    """
    from napari_segany.image_conversion import to_uint8_rgb
    from napari_segany.sam.coordinates import corners_to_sam_box, rowcol_to_xy
    from napari_segany.sam.interactive_session import mask_to_mask_input

    def segment_slice(index: int, prompts: SamPrompts) -> ObjectPrediction:
        predictor.set_image(to_uint8_rgb(read_slice(index), contrast_limits))
        has_points = len(prompts.points_rc) > 0
        masks, scores, logits = predictor.predict(
            point_coords=rowcol_to_xy(prompts.points_rc) if has_points else None,
            point_labels=prompts.point_labels if has_points else None,
            box=corners_to_sam_box(prompts.boxes_corners[0]) if prompts.boxes_corners else None,
            mask_input=(
                mask_to_mask_input(prompts.mask, int(predictor.model.low_res_mask_size[0]))
                if prompts.mask is not None
                else None
            ),
            multimask_output=True,
        )
        return ObjectPrediction(np.asarray(masks, bool), np.asarray(scores), np.asarray(logits))

    return segment_slice
