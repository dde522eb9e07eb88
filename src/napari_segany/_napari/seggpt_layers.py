"""napari layers ↔ arrays for SegGPT, and the scripting entry point.

:func:`plan_from_layers` reads image and labels layers into a
:class:`~napari_segany.seggpt.propagation.SlicePropagation` (validating everything first),
:func:`slice_edit` computes one finished slice's write (painted pixels kept; written through
:func:`~napari_segany._napari.layer_io.apply_edits`, undoable within the shared undo budget),
and :func:`segment_layers_with_seggpt` does the whole operation without the GUI::

    from napari_segany.scripting import segment_layers_with_seggpt

    labels = segment_layers_with_seggpt(viewer.layers["stack"], viewer.layers["painted"])
    viewer.add_layer(labels)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari import layer_io
from napari_segany.seggpt.propagation import (
    PropagationSettings,
    SliceKey,
    SlicePropagation,
    StackLayout,
    label_dtype,
    labelled_slices,
    select_slices,
)

if TYPE_CHECKING:
    from napari.layers import Image, Labels

SliceSelection = str | int | range | Iterable[Sequence[int]] | None
"""``"all"``, ``"current"``, an index or ``range`` on the first slice axis, or slice keys."""

OUTPUT_NAME = "SegGPT labels"


def image_layout(layer: Image) -> StackLayout:
    """Leading (slice) shape, spatial shape and RGB flag of an image layer's data.

    A multiscale layer is segmented at full resolution (level 0), as by SAM (one policy, see
    :func:`~napari_segany._napari.layer_io.image_array`).
    """
    from napari.layers import Image

    if not isinstance(layer, Image):
        raise ValueError(f"{getattr(layer, 'name', layer)!r} is not an image layer")
    return StackLayout.of(layer_io.image_array(layer).shape, layer.rgb)


def new_output_layer(
    target: Image,
    name: str = OUTPUT_NAME,
    initial_labels: Any | None = None,
    *,
    prompt_labels: Any | None = None,
) -> Labels:
    """An int32 labels layer with ``target``'s full shape and world placement.

    It starts empty, or as a copy of ``initial_labels`` when they have that shape (the labels
    painted on the target, so that the result is the complete stack). It is int64 when the ids
    of ``prompt_labels`` (or ``initial_labels``) do not fit int32.
    """
    data = new_output_data(target, initial_labels, prompt_labels=prompt_labels)
    return layer_io.new_labels_layer(target, name, data)


def new_output_data(
    target: Image, initial_labels: Any | None = None, *, prompt_labels: Any | None = None
) -> np.ndarray:
    """The array of :func:`new_output_layer` (made before the layer, e.g. for a worker thread)."""
    layout = image_layout(target)
    ids = prompt_labels if prompt_labels is not None else initial_labels
    dtype = label_dtype(np.asarray(ids)) if ids is not None else np.int32
    data = np.zeros(layout.label_shape, dtype=dtype)
    if initial_labels is not None and tuple(np.shape(initial_labels)) == layout.label_shape:
        data[...] = np.asarray(initial_labels)
    return data


def prompt_keys_from_selection(
    prompt_labels: Labels, selection: Iterable[int | Sequence[int]] | None
) -> list[SliceKey] | None:
    """Turn a user's prompt-slice choice into slice keys of the prompt labels.

    An int picks every labelled slice with that index on the first slice axis (all of them in a
    4D stack); a tuple is a full slice key. ``None`` (or empty) means every labelled slice.
    """
    if selection is None:
        return None
    selection = list(selection)
    if not selection:
        return None
    leading_ndim = prompt_labels.data.ndim - 2
    labelled = labelled_slices(np.asarray(prompt_labels.data), leading_ndim)
    keys: list[SliceKey] = []
    for item in selection:
        if isinstance(item, int | np.integer):
            if leading_ndim == 0:
                raise ValueError("the prompt labels are 2D: there are no slices to pick")
            matching = [k for k in labelled if k[0] == int(item)]
            if not matching:
                raise ValueError(
                    f"prompt slice {int(item)} of {prompt_labels.name!r} has no labels: paint "
                    "objects there or choose other slices"
                )
            keys.extend(matching)
        else:
            keys.append(tuple(int(i) for i in item))
    return list(dict.fromkeys(keys))


def plan_from_layers(
    target: Image,
    prompt_labels: Labels,
    prompt_image: Image | None = None,
    *,
    output: Labels | None = None,
    slices: SliceSelection = "all",
    current_key: SliceKey | None = None,
    prompt_slices: Iterable[int | Sequence[int]] | None = None,
    settings: PropagationSettings | None = None,
) -> SlicePropagation:
    """Validate the layers and plan which slices to segment with which prompts.

    Parameters
    ----------
    target
        Image layer to segment (2D, 3D, time series or 4D; grayscale or RGB; any dtype, scaled by
        its contrast limits).
    prompt_labels
        Labels painted on ``prompt_image`` (by default on ``target``).
    prompt_image
        The image the labels belong to; ``None`` or ``target`` means the target itself.
    output
        Labels layer the results go into (``None``: a new one is made later). Must have the
        target's shape. When it is ``prompt_labels`` the painted slices are left out.
    slices
        ``"all"``, ``"current"`` (needs ``current_key``), an index or ``range`` on the first slice
        axis, or explicit slice keys.
    current_key
        The slice the viewer shows (see :func:`~napari_segany._napari.layer_io.slice_key_at`).
    prompt_slices
        Which painted slices are prompts (see :func:`prompt_keys_from_selection`).
    settings
        :class:`~napari_segany.seggpt.propagation.PropagationSettings`.

    Raises
    ------
    ValueError
        Wrong layer types, shape mismatches, empty prompt labels, bad slice choices; the message
        says what to change. Nothing is modified.
    """
    from napari.layers import Labels

    if not isinstance(prompt_labels, Labels):
        raise ValueError(f"{getattr(prompt_labels, 'name', prompt_labels)!r} is not a labels layer")
    layout = image_layout(target)
    in_target = prompt_image is None or prompt_image is target
    prompt_image = target if prompt_image is None else prompt_image
    prompt_layout = image_layout(prompt_image)
    if output is not None:
        if not isinstance(output, Labels):
            raise ValueError(f"output {getattr(output, 'name', output)!r} is not a labels layer")
        if tuple(output.data.shape) != layout.label_shape:
            raise ValueError(
                f"output labels {output.name!r} have shape {tuple(output.data.shape)} but the "
                f"target {target.name!r} needs {layout.label_shape}: choose another output layer "
                "or a new one"
            )
    if isinstance(slices, str) and slices == "current":
        if current_key is None:
            raise ValueError("slices='current' needs the current slice key")
        slices = [current_key]
    targets = select_slices(layout.leading_shape, slices)
    return SlicePropagation(
        layer_io.image_array(target),
        layer_io.image_array(prompt_image),
        prompt_labels.data,
        targets=targets,
        prompt_slices=prompt_keys_from_selection(prompt_labels, prompt_slices),
        settings=settings,
        prompts_in_target=in_target,
        skip_prompt_slices=in_target or output is prompt_labels,
        target_rgb=layout.rgb,
        prompt_rgb=prompt_layout.rgb,
        target_contrast_limits=tuple(target.contrast_limits),
        prompt_contrast_limits=tuple(prompt_image.contrast_limits),
    )


def slice_edit(
    output: Labels, key: SliceKey, labels: np.ndarray, *, overwrite: bool = False
) -> layer_io.PlaneEdit | None:
    """What writing one predicted (H, W) slice into ``output`` at ``key`` changes.

    SegGPT predicts the whole slice: labelled pixels are kept unless ``overwrite``, which also
    writes the prediction's background (the one merge rule, see :mod:`.layer_io`).
    """
    return layer_io.plane_edit(output.data, key, labels, overwrite=overwrite)


def run_fits_undo(plan: SlicePropagation) -> bool:
    """Whether napari's undo may record a run: at most ``UNDO_PIXEL_BUDGET`` target pixels."""
    rows, cols = plan.target_layout.spatial_shape
    return len(plan) * rows * cols <= layer_io.UNDO_PIXEL_BUDGET


def seggpt_predictor(model: Any, device: str = "auto", precision: str = "auto") -> Any:
    """A SegGPT predictor from a predictor, a loaded model, or a source to load.

    ``model`` may be a :class:`~napari_segany.seggpt.SegGptPredictor` (used as is), a loaded
    SegGPT model, or a source for :func:`~napari_segany.seggpt.load_seggpt` (registry name, hub
    id, local folder or original ``.pth``), loaded on ``device`` in ``precision``.
    """
    if hasattr(model, "set_prompts") and hasattr(model, "predict"):
        return model
    from napari_segany.seggpt import SegGptPredictor, load_seggpt

    if isinstance(model, str | os.PathLike):
        model = load_seggpt(str(model), device=device, precision=precision)
    return SegGptPredictor(model)


def segment_layers_with_seggpt(
    target_image_layer: Image,
    prompt_labels_layer: Labels,
    prompt_image_layer: Image | None = None,
    *,
    slices: SliceSelection = "all",
    prompt_slices: Iterable[int | Sequence[int]] | None = None,
    max_prompts: int = 4,
    output_layer: Labels | None = None,
    model: Any = "seggpt-vit-l",
    device: str = "auto",
    precision: str = "auto",
    uncertainty_threshold: float | None = None,
    use_previous_frame: bool = False,
    time_axis: int = 0,
    overwrite: bool = False,
    current_key: SliceKey | None = None,
) -> Labels:
    """Segment an image layer in context from painted labels, without the GUI.

    Every labelled slice of ``prompt_labels_layer`` (up to ``max_prompts`` per target, the
    nearest ones) is a prompt; every chosen slice of ``target_image_layer`` is segmented.

    Parameters
    ----------
    target_image_layer
        The image to segment: 2D, 3D stack, time series or 4D; grayscale or RGB; any dtype (its
        contrast limits drive the scaling to 8 bits).
    prompt_labels_layer
        Painted labels (0 = background); by default painted on the target itself.
    prompt_image_layer
        A different (reference) image the labels were painted on.
    slices
        ``"all"``, ``"current"`` (with ``current_key``), an index or ``range`` on the first slice
        axis, or explicit slice keys (tuples of leading indices).
    prompt_slices
        Painted slices to use as prompts (indices on the first slice axis, or slice keys); default
        every labelled slice.
    max_prompts
        At most this many prompts per target (SegGPT's feature ensemble).
    output_layer
        Labels layer to write into (e.g. ``prompt_labels_layer`` itself: painted slices are kept).
        Default: a new int32 labels layer with the target's shape, scale and translation, holding
        the painted labels (when they were painted on the target) and the predictions.
    model, device, precision
        A loaded model / predictor, or a source to load (see :func:`seggpt_predictor`).
    uncertainty_threshold
        Leave pixels unlabelled whose predicted colour is farther than this from every palette
        colour (0-255 RGB distance); ``None`` keeps every pixel.
    use_previous_frame, time_axis
        Video mode: the neighbouring frame's prediction along ``time_axis`` (a slice axis) is an
        extra prompt.
    overwrite
        Replace existing labels in the output (default: fill only unlabelled pixels).

    A run into an existing ``output_layer`` is one undo step when it fits the undo budget
    (:data:`~napari_segany._napari.layer_io.UNDO_PIXEL_BUDGET` target pixels); if it fails or
    is interrupted, the layer is put back as it was and its undo history is unchanged. A larger
    run is neither undoable nor rolled back (slices written so far stay).

    Returns
    -------
    napari.layers.Labels
        ``output_layer`` (modified in place) or the new layer (not yet added to a viewer).
    """
    settings = PropagationSettings(
        max_prompts=max_prompts,
        use_previous_frame=use_previous_frame,
        time_axis=time_axis,
        uncertainty_threshold=uncertainty_threshold,
        overwrite_existing=overwrite,
    )
    plan = plan_from_layers(
        target_image_layer,
        prompt_labels_layer,
        prompt_image_layer,
        output=output_layer,
        slices=slices,
        current_key=current_key,
        prompt_slices=prompt_slices,
        settings=settings,
    )
    predictor = seggpt_predictor(model, device, precision)
    output = output_layer
    if output is None:
        painted = prompt_labels_layer.data if plan.prompts_in_target else None
        output = new_output_layer(
            target_image_layer, initial_labels=painted, prompt_labels=prompt_labels_layer.data
        )
    undoable = output_layer is not None and run_fits_undo(plan)
    written: list[layer_io.PlaneEdit] = []
    try:
        with output.block_history() if undoable else nullcontext():  # the run: one undo step
            for key, labels in plan.run(predictor):
                edit = slice_edit(output, key, labels, overwrite=overwrite)
                if edit is not None:
                    layer_io.apply_edits(output, [edit], undoable=undoable, own_history_step=False)
                    if undoable:  # a run too large to undo is not rolled back either
                        written.append(edit)
    except BaseException:
        if output_layer is not None:
            layer_io.roll_back(output, written)  # the layer is as it was before the run
        raise
    return output


__all__ = [
    "image_layout",
    "new_output_data",
    "new_output_layer",
    "plan_from_layers",
    "prompt_keys_from_selection",
    "run_fits_undo",
    "segment_layers_with_seggpt",
    "seggpt_predictor",
    "slice_edit",
]
