"""napari layers ↔ arrays, shared by the SAM and SegGPT glue (napari, no Qt).

Reading: the slice key of the slice the viewer shows (:func:`slice_key_at`), that slice as an
array (:func:`read_slice`), the layer's contrast limits. Writing: a labels layer placed exactly on
an image (:func:`new_labels_layer`), and one undoable plane write for both families:
:func:`plane_edit` computes what changes inside a bounding-box crop (numpy only, safe to run in a
worker thread) and :func:`apply_edits` writes it on the main thread, as one step of napari's
undo when it fits :data:`UNDO_PIXEL_BUDGET` and as a plain (not undoable) write beyond it.

Both families merge new labels with what is there by one rule,
:func:`~napari_segany.seggpt.propagation.merge_labels`: labelled pixels are kept unless
*overwrite*; inside the region a prediction speaks for, it wins with *overwrite*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany.seggpt.propagation import merge_labels

if TYPE_CHECKING:
    from napari.layers import Image, Labels

SliceKey = tuple[int, ...]

UNDO_PIXEL_BUDGET = 8_000_000
"""Most changed pixels one write may record in napari's undo history. napari keeps the index,
old and new value of every changed pixel (about 32 bytes each in a 3D stack), so the budget is
about 256 MB of history; a write beyond it is made without undo and the user is told so."""

__all__ = [
    "UNDO_PIXEL_BUDGET",
    "PlaneEdit",
    "apply_edits",
    "check_labels_fit",
    "contrast_limits_of",
    "edits_fit_undo",
    "image_array",
    "insert_layer",
    "labels_layer_kwargs",
    "merge_labels",
    "n_leading_axes",
    "new_labels_layer",
    "next_free_label",
    "plane_edit",
    "read_slice",
    "roll_back",
    "slice_key_at",
    "spatial_shape",
    "widen_for_label",
    "write_into_array",
]


# -- reading ----------------------------------------------------------------------------------


def image_array(layer: Any) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of a layer's data without an RGB(A) channel axis: the shape of its labels."""
    shape = tuple(int(s) for s in image_array(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def n_leading_axes(layer: Any) -> int:
    """Number of axes before the 2D plane (0 for a 2D image, 1 for a stack, ...)."""
    return len(spatial_shape(layer)) - 2


def slice_key_at(layer: Any, world_point: Sequence[float]) -> SliceKey:
    """The slice key (leading-axis indices) of ``layer`` at a world position.

    ``world_point`` is usually ``viewer.dims.point``; it goes through the layer's transforms, so
    layers placed anywhere in the world are sliced where the viewer shows them.

    Returns
    -------
    tuple[int, ...]
        One index per leading axis, rounded and clipped into the layer; ``()`` for 2D data.
    """
    lead = n_leading_axes(layer)
    if lead <= 0:
        return ()
    point = np.asarray(world_point, dtype=float)
    if len(point) < layer.ndim:
        point = np.concatenate([np.zeros(layer.ndim - len(point)), point])
    data_point = np.asarray(layer.world_to_data(point[-layer.ndim :]))
    shape = spatial_shape(layer)
    return tuple(int(np.clip(np.round(data_point[i]), 0, shape[i] - 1)) for i in range(lead))


def check_slice_key(layer: Any, key: Sequence[int]) -> SliceKey:
    """``key`` as ints, or ``ValueError`` naming the valid range when it is outside the layer."""
    key = tuple(int(i) for i in key)
    lead_shape = spatial_shape(layer)[:-2]
    if len(key) != len(lead_shape):
        raise ValueError(
            f"slice {key} does not fit layer {layer.name!r}: it has {len(lead_shape)} slice "
            f"axes of sizes {lead_shape}"
        )
    for axis, (i, n) in enumerate(zip(key, lead_shape, strict=True)):
        if not 0 <= i < n:
            raise ValueError(
                f"slice index {i} on axis {axis} is out of range: layer {layer.name!r} has "
                f"slices 0..{n - 1} there"
            )
    return key


def read_slice(layer: Any, key: Sequence[int]) -> np.ndarray:
    """The 2D slice ``key`` as a numpy array: (H, W) or (H, W, C) for RGB(A) layers."""
    return np.asarray(image_array(layer)[tuple(int(i) for i in key)])


def contrast_limits_of(image_layer: Image) -> tuple[float, float] | None:
    """The layer's contrast limits (``None`` for RGB layers, whose values are used as they are)."""
    if image_layer.rgb:
        return None
    low, high = image_layer.contrast_limits
    return float(low), float(high)


# -- new labels layers ------------------------------------------------------------------------


def labels_layer_kwargs(image_layer: Image) -> dict[str, Any]:
    """Placement keyword arguments that put a Labels layer exactly on ``image_layer``."""
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }


def new_labels_layer(
    image_layer: Image, name: str, data: Any | None = None, *, dtype: Any = np.int32
) -> Labels:
    """A Labels layer over ``image_layer``: ``data``, or zeros of its spatial shape in ``dtype``."""
    from napari.layers import Labels

    if data is None:
        data = np.zeros(spatial_shape(image_layer), dtype=dtype)
    return Labels(data, name=name, **labels_layer_kwargs(image_layer))


def insert_layer(layers: Any, index: int, layer: Any) -> None:
    """Insert ``layer`` at ``index`` of a viewer's layer list, leaving the selection as it is.

    napari makes an inserted layer the selected, active one, which rebuilds the layer controls
    and restyles the layer buttons on the main thread (tens of ms each way); a widget adding a
    result keeps the user's active layer instead (e.g. the SAM points layer, so clicks keep
    adding prompts), in a single insertion at the right place (no ``move`` afterwards).
    """
    activate = getattr(layers, "_activate_on_insert", None)
    if not isinstance(activate, bool):  # another napari: insert, then select the old one again
        active = layers.selection.active
        layers.insert(index, layer)
        if active is not None and active in layers:
            layers.selection.active = active
        return
    layers._activate_on_insert = False
    try:
        layers.insert(index, layer)
    finally:
        layers._activate_on_insert = activate


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
    return int(np.asarray(data).max(initial=0)) + 1


def widen_for_label(labels_layer: Labels, label: int) -> bool:
    """Make ``labels_layer`` able to hold ``label``: promote its dtype when it is too narrow.

    A numpy-backed layer is converted in place (e.g. uint8 → int32 when label 256 is needed);
    other backings (zarr, dask) cannot be, and raise ``ValueError`` saying so. Returns whether the
    dtype changed.
    """
    dtype = np.dtype(labels_layer.data.dtype)
    if np.can_cast(np.min_scalar_type(int(label)), dtype, casting="safe"):
        return False
    if not isinstance(labels_layer.data, np.ndarray):
        raise ValueError(
            f"label {label} does not fit the {dtype} labels layer {labels_layer.name!r} and its "
            "data cannot be converted in place: use a new layer or one with a wider type"
        )
    wider = np.int32 if label < 2**31 else np.int64
    labels_layer.data = labels_layer.data.astype(wider)
    return True


# -- one undoable plane write -----------------------------------------------------------------


@dataclass
class PlaneEdit:
    """What one write changes on one 2D slice, inside a bounding-box crop.

    Attributes
    ----------
    key
        Slice key of the plane.
    top, left
        Position of the crop in the plane (row, col).
    merged
        (h, w) the crop after the write, in the layer's dtype.
    changed
        (h, w) bool, pixels whose value changes.
    previous
        (h, w) the crop before the write (to roll a failed run back), or ``None``.
    """

    key: SliceKey
    top: int
    left: int
    merged: np.ndarray
    changed: np.ndarray
    previous: np.ndarray | None = None

    @property
    def n_changed(self) -> int:
        """Number of pixels the write changes."""
        return int(np.count_nonzero(self.changed))

    def indices(self) -> tuple[np.ndarray, ...]:
        """Full-layer fancy indices of the changed pixels (for ``Labels.data_setitem``)."""
        rows, cols = np.nonzero(self.changed)
        fill = [np.full(rows.size, i, dtype=np.intp) for i in self.key]
        return (*fill, rows + self.top, cols + self.left)

    def values(self) -> np.ndarray:
        """New values of the changed pixels (same order as :meth:`indices`)."""
        return self.merged[self.changed]


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the smallest box holding every ``True`` pixel, or ``None``."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def plane_edit(
    labels_data: Any,
    key: Sequence[int],
    predicted: np.ndarray | int,
    *,
    region: np.ndarray | None = None,
    overwrite: bool = False,
) -> PlaneEdit | None:
    """Compute the write of a prediction into the plane ``labels_data[key]`` (numpy only).

    Parameters
    ----------
    labels_data
        The labels layer's data (numpy, zarr, dask...); only a crop is read.
    key
        Slice key of the plane.
    predicted
        (H, W) predicted labels of the whole plane, or one label id written over ``region``.
    region
        (H, W) bool, the pixels the prediction speaks for (an object's mask for SAM); ``None``
        means the whole plane (SegGPT's full-slice prediction, whose background counts with
        ``overwrite``). Only the bounding box of the region (or of the prediction's non-zero
        pixels when nothing is erased) is read and compared, so a small object on a 12000²
        plane costs a small crop.
    overwrite
        Replace labelled pixels inside the region (see :func:`merge_labels`).

    Returns
    -------
    PlaneEdit or None
        ``None`` when nothing would change.
    """
    key = tuple(int(i) for i in key)
    plane_shape = tuple(labels_data.shape[len(key) :])
    if region is None:
        predicted = np.asarray(predicted)
        if predicted.shape != plane_shape:
            raise ValueError(
                f"prediction shape {predicted.shape} differs from the labels' plane {plane_shape}"
            )
        # a full-slice prediction with overwrite also writes its background
        box = (slice(None), slice(None)) if overwrite else bounding_box(predicted != 0)
    else:
        region = np.asarray(region, bool)
        if region.shape != plane_shape:
            raise ValueError(f"mask shape {region.shape} does not match the slice {plane_shape}")
        box = bounding_box(region)
    if box is None:
        return None
    existing = np.array(labels_data[key + box], copy=True)  # a view would change with the write
    if region is None:
        crop = np.asarray(predicted)[box]
    elif np.ndim(predicted) == 0:
        crop = np.where(region[box], predicted, existing)
    else:
        crop = np.where(region[box], np.asarray(predicted)[box], existing)
    merged = merge_labels(existing, crop, overwrite=overwrite)
    changed = merged != existing
    if not changed.any():
        return None
    return PlaneEdit(key, int(box[0].start or 0), int(box[1].start or 0), merged, changed, existing)


def edits_fit_undo(edits: Sequence[PlaneEdit], budget: int | None = None) -> bool:
    """Whether napari's undo may record ``edits`` (at most ``budget`` changed pixels in all).

    ``budget`` defaults to :data:`UNDO_PIXEL_BUDGET`.
    """
    budget = UNDO_PIXEL_BUDGET if budget is None else budget
    return sum(e.n_changed for e in edits) <= budget


def apply_edits(
    labels_layer: Labels,
    edits: Sequence[PlaneEdit | None],
    *,
    undoable: bool | None = None,
    own_history_step: bool = True,
    shown_key: SliceKey | None = None,
) -> bool:
    """Write plane edits into a labels layer, on the main thread.

    With ``undoable`` (default: when :func:`edits_fit_undo`), all edits are one step of napari's
    undo (``block_history`` + ``data_setitem``, which redraws only the changed region; with
    ``own_history_step=False`` the caller holds ``block_history`` for a longer run); otherwise
    the crops are assigned directly and the layer redrawn (cheap, but not undoable). Given
    ``shown_key`` (the slice the viewer shows, :func:`slice_key_at`), edits of other slices are
    not redrawn: napari reads them afresh when the viewer moves there. Returns whether the write
    was undoable.
    """
    edits = [e for e in edits if e is not None]
    if not edits:
        return True
    if undoable is None:
        undoable = edits_fit_undo(edits)

    def redraw(edit: PlaneEdit) -> bool:
        return shown_key is None or tuple(edit.key) == tuple(shown_key)

    if undoable:
        if not own_history_step:
            for edit in edits:
                labels_layer.data_setitem(edit.indices(), edit.values(), refresh=redraw(edit))
            return True
        with labels_layer.block_history():
            for edit in edits:
                labels_layer.data_setitem(edit.indices(), edit.values(), refresh=redraw(edit))
        return True
    write_into_array(labels_layer.data, edits)
    if any(redraw(edit) for edit in edits):
        labels_layer.refresh()
    return False


def write_into_array(data: Any, edits: Sequence[PlaneEdit]) -> None:
    """Assign the edits' crops into an array (numpy only: no layer, no undo, no redraw)."""
    for edit in edits:
        rows = slice(edit.top, edit.top + edit.merged.shape[0])
        cols = slice(edit.left, edit.left + edit.merged.shape[1])
        data[edit.key + (rows, cols)] = edit.merged


def roll_back(labels_layer: Labels, edits: Sequence[PlaneEdit]) -> None:
    """Undo ``edits`` (applied in order) without touching napari's undo history.

    For a run that failed half-way inside ``block_history``: the old values are put back and the
    run's staged history entries are dropped, so the layer's undo history is as before the run.
    """
    for edit in reversed(list(edits)):
        if edit.previous is None:
            continue
        rows = slice(edit.top, edit.top + edit.merged.shape[0])
        cols = slice(edit.left, edit.left + edit.merged.shape[1])
        labels_layer.data[edit.key + (rows, cols)] = edit.previous
    staged = getattr(labels_layer, "_staged_history", None)
    if isinstance(staged, list):
        staged.clear()
    labels_layer.refresh()
