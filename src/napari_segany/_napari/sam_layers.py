"""Layer → array glue for SAM prompts, and SAM's object writes (napari, no Qt).

Reading: the prompts (points of a Points layer, rectangles of a Shapes layer) in a slice's data
coordinates ``(row, col)``: every position goes prompt-layer data → world (the prompt layer's
transform) → image data (the image layer's inverse transform), never assuming identical
transforms. Slices, images and new layers come from the shared :mod:`.layer_io`.

Writing: :func:`mask_edits` turns object masks into :class:`~.layer_io.PlaneEdit` crops (numpy
only, may run in a worker thread) and :func:`write_masks` writes them as one undo step (through
:func:`.layer_io.apply_edits`, with its undo-pixel budget), never overwriting existing labels
unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari.layer_io import (
    PlaneEdit,
    apply_edits,
    contrast_limits_of,
    edits_fit_undo,
    n_leading_axes,
    next_free_label,
    plane_edit,
    slice_key_at,
    spatial_shape,
    widen_for_label,
)
from napari_segany.sam.embedding_cache import EmbeddingKey
from napari_segany.sam.interactive_session import InteractiveSamSession, SamPrompts

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points, Shapes

MAX_WIDGET_POINTS = 1024
"""Most prompt points the widget reads (SAM uses a handful; reading 100 000 would stall the GUI)."""
POSITIVE = "positive"
NEGATIVE = "negative"
PROMPT_FEATURE = "prompt"


# -- checks -----------------------------------------------------------------------------------


def check_image_layer(image_layer: Any) -> None:
    """Raise ``ValueError`` (with what to do) when a layer cannot be segmented by SAM."""
    from napari.layers import Image

    if image_layer is None:
        raise ValueError("no image layer: open an image and pick it in the 'image' box")
    if not isinstance(image_layer, Image):
        raise ValueError(f"layer {image_layer.name!r} is not an image layer; pick an image")
    if len(spatial_shape(image_layer)) < 2:
        raise ValueError(f"image {image_layer.name!r} has fewer than 2 dimensions")


def check_plane_displayed(dims: Any) -> None:
    """Raise ``ValueError`` unless the viewer shows the last two axes in 2D (SAM's plane)."""
    ndim = int(dims.ndim)
    if int(dims.ndisplay) != 2:
        raise ValueError("SAM works on 2D slices: switch the viewer to 2D display")
    if tuple(dims.displayed) != (ndim - 2, ndim - 1):
        raise ValueError(
            "SAM segments the plane of the last two axes: reset the axis order (transpose) so "
            "that the last two axes are displayed"
        )


# -- reading prompts --------------------------------------------------------------------------


def _to_image_data(
    positions: np.ndarray,
    prompt_layer: Any,
    image_layer: Image,
    world_point: Sequence[float] | None,
) -> np.ndarray:
    """(N, D_prompt) prompt-layer data positions → (N, D_image) image data positions."""
    world_ndim = max(len(world_point) if world_point is not None else 0, image_layer.ndim)
    base = np.zeros(world_ndim)
    if world_point is not None:
        base[world_ndim - len(world_point) :] = world_point
    out = np.empty((len(positions), image_layer.ndim))
    for i, position in enumerate(np.asarray(positions, dtype=float)):
        world = np.asarray(prompt_layer.data_to_world(position), dtype=float)
        full = base.copy()
        full[world_ndim - len(world) :] = world
        out[i] = np.asarray(image_layer.world_to_data(full), dtype=float)
    return out


def _on_slice(positions: np.ndarray, slice_index: Sequence[int]) -> np.ndarray:
    """Boolean (N,) of positions whose leading coordinates round to ``slice_index``."""
    lead = len(slice_index)
    if lead == 0:
        return np.ones(len(positions), dtype=bool)
    return np.all(np.round(positions[:, :lead]) == np.asarray(slice_index), axis=1)


def point_labels_of(points_layer: Points) -> np.ndarray:
    """(N,) int64: 1 for positive points, 0 for negative ones (feature ``"prompt"``).

    ``"negative"`` in any letter case (``"Negative"``, ``"NEGATIVE"``) marks a negative point.
    """
    n = len(points_layer.data)
    features = points_layer.features
    if PROMPT_FEATURE not in features or n == 0:
        return np.ones(n, dtype=np.int64)
    kinds = np.char.lower(np.char.strip(np.asarray(features[PROMPT_FEATURE]).astype(str)))
    return (kinds != NEGATIVE).astype(np.int64)


def points_on_slice(
    points_layer: Points | None,
    image_layer: Image,
    slice_index: Sequence[int],
    world_point: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The points on one slice, in that slice's ``(row, col)`` data coordinates.

    Parameters
    ----------
    points_layer
        Prompt points (any transform); ``None`` gives no points. A points layer with fewer
        dimensions than the image applies to every slice.
    image_layer
        The image being segmented.
    slice_index
        Leading-axis indices of the slice.
    world_point
        The viewer's current world position (``viewer.dims.point``), used for the axes a
        lower-dimensional points layer lacks.

    Returns
    -------
    points_rc : np.ndarray
        (N, 2) float64 ``(row, col)``.
    labels : np.ndarray
        (N,) int64, 1 positive, 0 negative.
    """
    if points_layer is None or len(points_layer.data) == 0:
        return np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
    if world_point is None and points_layer.ndim < image_layer.ndim:
        world_point = _world_point_of_slice(image_layer, slice_index)
    positions = _to_image_data(
        np.asarray(points_layer.data), points_layer, image_layer, world_point
    )
    keep = _on_slice(positions, slice_index)
    return positions[keep, -2:], point_labels_of(points_layer)[keep]


def boxes_on_slice(
    shapes_layer: Shapes | None,
    image_layer: Image,
    slice_index: Sequence[int],
    world_point: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """The rectangles of a Shapes layer on one slice, as (4, 2) ``(row, col)`` vertex arrays.

    Shapes other than rectangles are ignored. See :func:`points_on_slice` for the parameters.
    """
    if shapes_layer is None or len(shapes_layer.data) == 0:
        return []
    if world_point is None and shapes_layer.ndim < image_layer.ndim:
        world_point = _world_point_of_slice(image_layer, slice_index)
    boxes = []
    for vertices, kind in zip(shapes_layer.data, shapes_layer.shape_type, strict=False):
        if kind != "rectangle":
            continue
        positions = _to_image_data(np.asarray(vertices), shapes_layer, image_layer, world_point)
        if _on_slice(positions, slice_index).all():
            boxes.append(positions[:, -2:])
    return boxes


def _world_point_of_slice(image_layer: Image, slice_index: Sequence[int]) -> np.ndarray:
    data_point = np.zeros(image_layer.ndim)
    data_point[: len(slice_index)] = slice_index
    return np.asarray(image_layer.data_to_world(data_point), dtype=float)


def prompt_slices(
    image_layer: Image, points_layer: Points | None, shapes_layer: Shapes | None
) -> list[tuple[int, ...]]:
    """Every slice (leading-axis indices) that holds at least one point or rectangle, sorted."""
    lead = n_leading_axes(image_layer)
    if lead == 0:
        return [()]
    found: set[tuple[int, ...]] = set()
    for layer in (points_layer, shapes_layer):
        if layer is None or len(layer.data) == 0 or layer.ndim < image_layer.ndim:
            continue
        arrays = [np.asarray(layer.data)] if layer is points_layer else list(layer.data)
        for array in arrays:
            positions = _to_image_data(np.asarray(array), layer, image_layer, None)
            for row in np.round(positions[:, :lead]).astype(int):
                found.add(tuple(int(v) for v in row))
    return sorted(found)


def check_prompts_inside(prompts: SamPrompts, plane_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` when a point or a whole box lies outside the 2D image."""
    height, width = plane_shape
    points = np.asarray(prompts.points_rc).reshape(-1, 2)
    outside = (
        (points[:, 0] < -0.5)
        | (points[:, 0] > height - 0.5)
        | (points[:, 1] < -0.5)
        | (points[:, 1] > width - 0.5)
    )
    if outside.any():
        r, c = points[np.flatnonzero(outside)[0]]
        raise ValueError(
            f"{int(outside.sum())} prompt point(s) lie outside the {height}×{width} image (e.g. "
            f"row {r:.0f}, col {c:.0f}); move or delete them"
        )
    for corners in prompts.boxes_corners:
        low, high = np.min(corners, axis=0), np.max(corners, axis=0)
        if high[0] < -0.5 or high[1] < -0.5 or low[0] > height - 0.5 or low[1] > width - 0.5:
            raise ValueError(
                f"a box lies entirely outside the {height}×{width} image; move or delete it"
            )


# -- one slice's context ---------------------------------------------------------------------


@dataclass
class SliceContext:
    """What one preview or commit refers to: image, slice, cache key, prompts and version."""

    image_layer: Image
    slice_index: tuple[int, ...]
    key: EmbeddingKey
    prompts: SamPrompts
    version: int


def read_slice_context(
    dims: Any,
    image: Any,
    points_layer: Points | None,
    shapes_layer: Shapes | None,
    output: Labels | None,
    refine_label: int,
    session: InteractiveSamSession,
    version: int,
) -> SliceContext:
    """Read the prompts on the slice the viewer shows into a :class:`SliceContext`.

    ``refine_label`` > 0 adds that label's mask on the slice of ``output`` as the mask prompt.

    Raises
    ------
    ValueError
        No usable image, a view other than the image's last two axes in 2D, or prompts outside
        the image.
    """
    check_image_layer(image)
    check_plane_displayed(dims)
    n_points = 0 if points_layer is None else len(points_layer.data)
    if n_points > MAX_WIDGET_POINTS:
        raise ValueError(
            f"the points layer holds {n_points} points; SAM needs a handful per object (at most "
            f"{MAX_WIDGET_POINTS}): delete points, or use a box"
        )
    key = slice_key_at(image, dims.point)
    points, labels = points_on_slice(points_layer, image, key, dims.point)
    boxes = boxes_on_slice(shapes_layer, image, key, dims.point)
    mask = None
    if refine_label and output is not None and output.data.shape == spatial_shape(image):
        mask = np.asarray(output.data[key]) == int(refine_label)
    prompts = SamPrompts(points, labels, boxes, mask)
    check_prompts_inside(prompts, spatial_shape(image)[-2:])
    layer_id = str(image.unique_id)
    embedding = (
        session.embedding_key(layer_id, key, contrast_limits_of(image))
        if session.has_model
        else EmbeddingKey(layer_id, key, "", "")
    )
    return SliceContext(image, key, embedding, prompts, version)


# -- writing labels ---------------------------------------------------------------------------


def mask_edits(
    labels_data: Any,
    slice_index: Sequence[int],
    masks: Sequence[np.ndarray],
    label_ids: Sequence[int],
    *,
    overwrite: bool = False,
    replace_label: int | None = None,
) -> list[PlaneEdit]:
    """The crops that writing object masks into one slice changes (numpy only, no layer touched).

    Each mask is compared with the labels only inside its bounding box (plus the refined label's
    box when ``replace_label``), so a small object on a huge plane reads and writes a small crop.
    Later masks see earlier ones (the same rule as painting them one after the other).
    """
    key = tuple(int(i) for i in slice_index)
    plane_shape = tuple(labels_data.shape[len(key) :])
    edits: list[PlaneEdit] = []
    view = _EditedPlane(labels_data, key)
    if replace_label:
        keep = np.zeros(plane_shape, dtype=bool)
        for mask in masks:
            keep |= np.asarray(mask, bool)
        old = view.read_full() == replace_label
        stale = old & ~keep
        if stale.any():
            edit = plane_edit(view, (), 0, region=stale, overwrite=True)
            if edit is not None:
                edits.append(view.record(edit, key))
    for mask, label in zip(masks, label_ids, strict=True):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != plane_shape:
            raise ValueError(f"mask shape {mask.shape} does not match the slice {plane_shape}")
        edit = plane_edit(view, (), int(label), region=mask, overwrite=overwrite)
        if edit is not None:
            edits.append(view.record(edit, key))
    return edits


class _EditedPlane:
    """One plane of the labels with the edits computed so far applied to crops read from it."""

    def __init__(self, labels_data: Any, key: tuple[int, ...]) -> None:
        self.labels_data = labels_data
        self.key = key
        self.shape = tuple(labels_data.shape[len(key) :])
        self.dtype = labels_data.dtype
        self.edits: list[PlaneEdit] = []

    def __getitem__(self, box: tuple[slice, slice]) -> np.ndarray:
        crop = np.array(self.labels_data[self.key + tuple(box)], copy=True)
        rows, cols = (range(self.shape[0])[box[0]], range(self.shape[1])[box[1]])
        for edit in self.edits:
            r0 = max(rows.start, edit.top)
            r1 = min(rows.stop, edit.top + edit.merged.shape[0])
            c0 = max(cols.start, edit.left)
            c1 = min(cols.stop, edit.left + edit.merged.shape[1])
            if r0 >= r1 or c0 >= c1:
                continue
            src = (slice(r0 - edit.top, r1 - edit.top), slice(c0 - edit.left, c1 - edit.left))
            dst = (slice(r0 - rows.start, r1 - rows.start), slice(c0 - cols.start, c1 - cols.start))
            crop[dst] = np.where(edit.changed[src], edit.merged[src], crop[dst])
        return crop

    def read_full(self) -> np.ndarray:
        return self[(slice(None), slice(None))]

    def record(self, edit: PlaneEdit, key: tuple[int, ...]) -> PlaneEdit:
        self.edits.append(edit)
        return PlaneEdit(key, edit.top, edit.left, edit.merged, edit.changed)


def write_masks(
    labels_layer: Labels,
    slice_index: Sequence[int],
    masks: Sequence[np.ndarray],
    *,
    label_ids: Sequence[int] | None = None,
    overwrite: bool = False,
    replace_label: int | None = None,
) -> list[int]:
    """Write object masks into one slice of a labels layer as a single undoable step.

    Parameters
    ----------
    labels_layer
        Output layer; its data has the image's spatial shape.
    slice_index
        Leading-axis indices of the 2D slice.
    masks
        (H, W) bool mask per object.
    label_ids
        Label per object; by default consecutive ids from :func:`next_free_label` (or
        ``replace_label`` first when refining).
    overwrite
        Also paint over pixels that already carry another label. By default only background
        (0) pixels are written, so nothing already labelled is lost.
    replace_label
        Label being refined: its old pixels on this slice outside the new masks become 0.

    Returns
    -------
    list[int]
        The label id of each mask that changed at least one pixel (empty when nothing was
        written, e.g. the object is already labelled and ``overwrite`` is off).
    """
    label_ids = planned_label_ids(labels_layer.data, len(masks), label_ids, replace_label)
    if label_ids:
        widen_for_label(labels_layer, max(label_ids))
    edits = mask_edits(
        labels_layer.data,
        slice_index,
        masks,
        label_ids,
        overwrite=overwrite,
        replace_label=replace_label,
    )
    apply_edits(labels_layer, edits)
    return written_ids(edits, label_ids)


def planned_label_ids(
    labels_data: Any,
    n_masks: int,
    label_ids: Sequence[int] | None = None,
    replace_label: int | None = None,
) -> list[int]:
    """The label id each mask gets: given ones, or consecutive free ids (``replace_label`` first)."""
    if label_ids is None:
        start = replace_label if replace_label else next_free_label(labels_data)
        label_ids = [start + i for i in range(n_masks)]
    label_ids = [int(i) for i in label_ids]
    if len(label_ids) != n_masks:
        raise ValueError(f"{n_masks} masks but {len(label_ids)} label ids")
    return label_ids


def written_ids(edits: Sequence[PlaneEdit], label_ids: Sequence[int]) -> list[int]:
    """The ids among ``label_ids`` that some edit actually writes, in order."""
    present: set[int] = set()
    for edit in edits:
        present.update(int(v) for v in np.unique(edit.values()))
    return [i for i in label_ids if i in present]


def write_mask_on_slices(
    labels_layer: Labels,
    masks: dict[tuple[int, ...], np.ndarray],
    label_id: int,
    *,
    overwrite: bool = False,
) -> bool:
    """Write one object's mask on many slices (slice index → (H, W) bool) as one undo step.

    Returns whether the write was undoable (see :func:`.layer_io.apply_edits`).
    """
    widen_for_label(labels_layer, int(label_id))
    edits = []
    for slice_index, mask in masks.items():
        edits += mask_edits(
            labels_layer.data, slice_index, [mask], [int(label_id)], overwrite=overwrite
        )
    return apply_edits(labels_layer, edits)


__all__ = [
    "NEGATIVE",
    "SliceContext",
    "read_slice_context",
    "POSITIVE",
    "PROMPT_FEATURE",
    "boxes_on_slice",
    "check_image_layer",
    "check_plane_displayed",
    "check_prompts_inside",
    "edits_fit_undo",
    "mask_edits",
    "planned_label_ids",
    "point_labels_of",
    "points_on_slice",
    "prompt_slices",
    "write_mask_on_slices",
    "write_masks",
    "written_ids",
]
