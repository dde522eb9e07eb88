"""Layer ↔ array glue for SAM, and the scripting entry points.

Reading: which 2D slice of an image layer the viewer shows, that slice as an array, and the
prompts (points of a Points layer, rectangles of a Shapes layer) in that slice's data coordinates
``(row, col)``: every position goes prompt-layer data → world (the prompt layer's transform) →
image data (the image layer's inverse transform), never assuming identical transforms.

Writing: an output Labels layer with the image's full (non-RGB) shape, scale, translation,
rotation, shear and affine; masks written with ``Labels.data_setitem`` inside one
``block_history`` so a commit is one step of napari's undo, never overwriting existing labels
unless asked.

The scripting functions (:func:`segment_layers_with_sam`, :func:`segment_everything_in_layer`,
:func:`propagate_label_through_stack`) live in :mod:`napari_segany._napari.sam_scripting` and can
also be imported from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany.sam.interactive_session import SamPrompts

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points, Shapes

POSITIVE = "positive"
NEGATIVE = "negative"
PROMPT_FEATURE = "prompt"


# -- reading image layers ---------------------------------------------------------------------


def image_array(image_layer: Image) -> Any:
    """The full-resolution data of an image layer (level 0 of a multiscale layer)."""
    return image_layer.data[0] if image_layer.multiscale else image_layer.data


def spatial_shape(image_layer: Image) -> tuple[int, ...]:
    """Shape of the image without its RGB(A) channel axis: the shape of its labels."""
    shape = tuple(int(s) for s in image_array(image_layer).shape)
    return shape[:-1] if image_layer.rgb else shape


def n_leading_axes(image_layer: Image) -> int:
    """Number of axes before the 2D plane SAM sees (0 for a 2D image, 1 for a stack, ...)."""
    return len(spatial_shape(image_layer)) - 2


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


def slice_index_at(image_layer: Image, world_point: Sequence[float]) -> tuple[int, ...]:
    """Indices of the leading (non-plane) axes at a world position (e.g. ``viewer.dims.point``).

    Returns
    -------
    tuple[int, ...]
        One index per leading axis, rounded and clipped into the image; ``()`` for a 2D image.
    """
    lead = n_leading_axes(image_layer)
    if lead == 0:
        return ()
    data_point = np.asarray(image_layer.world_to_data(np.asarray(world_point, dtype=float)))
    shape = spatial_shape(image_layer)
    return tuple(int(np.clip(np.round(data_point[i]), 0, shape[i] - 1)) for i in range(lead))


def read_slice(image_layer: Image, slice_index: Sequence[int]) -> np.ndarray:
    """The 2D slice ``slice_index`` as a numpy array: (H, W) or (H, W, C) for RGB(A) layers."""
    data = image_array(image_layer)
    return np.asarray(data[tuple(int(i) for i in slice_index)])


def contrast_limits_of(image_layer: Image) -> tuple[float, float] | None:
    """The layer's contrast limits (``None`` for RGB layers, whose values are used as they are)."""
    if image_layer.rgb:
        return None
    low, high = image_layer.contrast_limits
    return float(low), float(high)


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
    """(N,) int64: 1 for positive points, 0 for negative ones (feature ``"prompt"``)."""
    n = len(points_layer.data)
    features = points_layer.features
    if PROMPT_FEATURE not in features or n == 0:
        return np.ones(n, dtype=np.int64)
    return (np.asarray(features[PROMPT_FEATURE]).astype(str) != NEGATIVE).astype(np.int64)


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


# -- writing labels ---------------------------------------------------------------------------


def labels_layer_kwargs(image_layer: Image) -> dict[str, Any]:
    """Placement keyword arguments that put a Labels layer exactly on ``image_layer``."""
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }


def new_labels_layer(image_layer: Image, name: str, data: np.ndarray | None = None) -> Labels:
    """A Labels layer over ``image_layer`` (int32 zeros of its spatial shape unless ``data``)."""
    from napari.layers import Labels

    if data is None:
        data = np.zeros(spatial_shape(image_layer), dtype=np.int32)
    return Labels(data, name=name, **labels_layer_kwargs(image_layer))


def check_labels_fit(labels_layer: Labels, image_layer: Image) -> None:
    """Raise ``ValueError`` when a labels layer's shape differs from the image's spatial shape."""
    shape = spatial_shape(image_layer)
    if tuple(labels_layer.data.shape) != shape:
        raise ValueError(
            f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)} but "
            f"image {image_layer.name!r} needs {shape}; pick another labels layer or 'new layer'"
        )


def next_free_label(data: Any) -> int:
    """One more than the largest label in ``data`` (1 for an empty layer)."""
    data = np.asarray(data)
    return int(data.max(initial=0)) + 1


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
        The label id of each mask.
    """
    if label_ids is None:
        start = replace_label if replace_label else next_free_label(labels_layer.data)
        label_ids = [start + i for i in range(len(masks))]
    label_ids = [int(i) for i in label_ids]
    if len(label_ids) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(label_ids)} label ids")
    with labels_layer.block_history():
        _write_plane(labels_layer, tuple(slice_index), masks, label_ids, overwrite, replace_label)
    return label_ids


def write_mask_on_slices(
    labels_layer: Labels,
    masks: dict[tuple[int, ...], np.ndarray],
    label_id: int,
    *,
    overwrite: bool = False,
) -> None:
    """Write one object's mask on many slices (slice index → (H, W) bool) as one undo step."""
    with labels_layer.block_history():
        for slice_index, mask in masks.items():
            _write_plane(labels_layer, tuple(slice_index), [mask], [int(label_id)], overwrite, None)


def _write_plane(
    labels_layer: Labels,
    slice_index: tuple[int, ...],
    masks: Sequence[np.ndarray],
    label_ids: Sequence[int],
    overwrite: bool,
    replace_label: int | None,
) -> None:
    plane = np.asarray(labels_layer.data[slice_index])
    if replace_label:
        stale = plane == replace_label
        for mask in masks:
            stale &= ~np.asarray(mask, bool)
        _set_pixels(labels_layer, slice_index, stale, 0)
        plane = np.where(stale, 0, plane)
    for mask, label in zip(masks, label_ids, strict=True):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != plane.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the slice {plane.shape}")
        writable = mask if overwrite else mask & ((plane == 0) | (plane == label))
        _set_pixels(labels_layer, slice_index, writable, label)
        plane = np.where(writable, label, plane)


def _set_pixels(
    labels_layer: Labels, slice_index: tuple[int, ...], where: np.ndarray, value: int
) -> None:
    rows, cols = np.nonzero(where)
    if rows.size == 0:
        return
    indices = tuple(np.full(rows.size, i, dtype=np.intp) for i in slice_index) + (rows, cols)
    labels_layer.data_setitem(indices, value)


_SCRIPTING = (
    "segment_layers_with_sam",
    "segment_everything_in_layer",
    "propagate_label_through_stack",
)


def __getattr__(name: str) -> Any:
    # The scripting functions live in sam_scripting (which imports this module); they are
    # importable from here too, loaded on first access.
    if name in _SCRIPTING:
        from napari_segany._napari import sam_scripting

        return getattr(sam_scripting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
