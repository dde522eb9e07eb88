"""Scripting SAM in napari: the widget's operations as plain functions on layers.

For scripted napari sessions (or notebooks) the same operations as the *Segment Anything* widget,
without clicking:

- :func:`segment_layers_with_sam`: points and rectangles → objects in a labels layer;
- :func:`segment_everything_in_layer`: automatic instance segmentation → a new labels layer;
- :func:`propagate_label_through_stack`: carry one label through the slices of a stack.

They call the same pure jobs as the widget (:func:`~napari_segany.sam.automatic.segment_everything_job`,
:func:`~napari_segany.sam.propagation.propagate_along_axis`) and write through the same layer
glue (:mod:`.layer_io`, :mod:`.sam_layers`). No Qt here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari.layer_io import (
    check_labels_fit,
    check_slice_key,
    contrast_limits_of,
    n_leading_axes,
    new_labels_layer,
    read_slice,
    spatial_shape,
)
from napari_segany._napari.sam_layers import (
    boxes_on_slice,
    check_image_layer,
    check_prompts_inside,
    points_on_slice,
    prompt_slices,
    write_mask_on_slices,
    write_masks,
)
from napari_segany.jobs import run_to_completion
from napari_segany.sam.automatic import segment_everything_job
from napari_segany.sam.interactive_session import InteractiveSamSession, SamPrompts
from napari_segany.sam.propagation import PropagationSettings, propagate_along_axis

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points, Shapes


# -- scripting --------------------------------------------------------------------------------


def load_session(
    model: Any = "sam-vit-b",
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | None = None,
) -> InteractiveSamSession:
    """An :class:`InteractiveSamSession` on a model given by name/path or already loaded.

    ``model`` may also be an existing session, returned as it is (so its cache is reused).
    ``cache_dir`` keeps image embeddings on disk across sessions (see
    :func:`napari_segany.sam.session_factory.open_sam_session`).
    """
    if isinstance(model, InteractiveSamSession):
        return model
    from napari_segany.sam.session_factory import open_sam_session

    return open_sam_session(model, device=device, precision=precision, cache_dir=cache_dir)


def segment_layers_with_sam(
    image_layer: Image,
    points_layer: Points | None = None,
    shapes_layer: Shapes | None = None,
    labels_layer: Labels | None = None,
    *,
    model: Any = "sam-vit-b",
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    candidate: int = 0,
    name: str = "SAM labels",
) -> Labels:
    """Segment the objects that points and rectangles mark on an image layer, without a widget.

    Every slice of the image that holds prompts is segmented: on each, all points make one
    object, or, with rectangles, every rectangle makes one object (with the points inside it).
    Positive/negative points are read from the points layer's ``"prompt"`` feature
    (``"positive"`` / ``"negative"``; all positive when absent). New objects get the next free
    label ids.

    Parameters
    ----------
    image_layer
        2D grayscale/RGB image or a stack (3D, time, 4D); contrast limits drive the scaling.
    points_layer, shapes_layer
        Prompts, in any coordinate transform (converted through world coordinates).
    labels_layer
        Where to write; a new layer (not added to any viewer) when ``None``.
    model
        Registry name, hub id, folder or ``.pth`` path; a loaded SAM model; or an
        :class:`InteractiveSamSession` (reuses its model and embedding cache).
    device, precision
        Used when ``model`` is a name or path.
    overwrite
        Paint over existing labels (default: only background pixels are written).
    candidate
        Which of SAM's candidate masks to take, 0 = best predicted IoU.
    name
        Name of the new labels layer.

    Returns
    -------
    napari.layers.Labels
        ``labels_layer``, or the new layer: same spatial shape, scale and translation as the
        image, int32.

    Examples
    --------
    >>> labels = segment_layers_with_sam(viewer.layers["cells"], viewer.layers["points"],
    ...                                  model="sam-vit-b")  # doctest: +SKIP
    >>> viewer.add_layer(labels)  # doctest: +SKIP
    """
    check_image_layer(image_layer)
    if labels_layer is None:
        labels_layer = new_labels_layer(image_layer, name)
    else:
        check_labels_fit(labels_layer, image_layer)
    session = load_session(model, device, precision)
    layer_id = str(image_layer.unique_id)
    limits = contrast_limits_of(image_layer)
    for slice_index in prompt_slices(image_layer, points_layer, shapes_layer):
        points, labels = points_on_slice(points_layer, image_layer, slice_index)
        prompts = SamPrompts(points, labels, boxes_on_slice(shapes_layer, image_layer, slice_index))
        if prompts.is_empty:
            continue
        image = read_slice(image_layer, slice_index)
        check_prompts_inside(prompts, image.shape[:2])
        key = session.embedding_key(layer_id, slice_index, limits)
        session.embed_now(key, image)
        session.decode(key, prompts)
        session.candidate_offset = candidate
        write_masks(labels_layer, slice_index, session.chosen_masks(), overwrite=overwrite)
    return labels_layer


def segment_everything_in_layer(
    image_layer: Image,
    *,
    model: Any = "sam-vit-b",
    device: str = "auto",
    precision: str = "auto",
    slice_index: Sequence[int] | None = None,
    name: str = "SAM everything",
    **options: Any,
) -> Labels:
    """Automatic instance segmentation of an image layer into a new Labels layer, without a widget.

    Parameters
    ----------
    image_layer
        2D image or stack; every 2D slice is segmented on its own (ids stay unique).
    model, device, precision
        As in :func:`segment_layers_with_sam`.
    slice_index
        Only this slice (leading-axis indices) instead of all of them.
    name
        Name of the new layer.
    **options
        Passed to :func:`napari_segany.sam.automatic.segment_everything` (``points_per_side``,
        ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``, ...).
    """
    check_image_layer(image_layer)
    shape = spatial_shape(image_layer)
    if slice_index is not None:
        slices = [check_slice_key(image_layer, slice_index)]
    else:
        slices = list(np.ndindex(*shape[:-2]))
    session = load_session(model, device, precision)
    from napari_segany.sam.predictor import SamPredictor

    job = segment_everything_job(
        SamPredictor(session.model),
        lambda s: read_slice(image_layer, s),
        slices,
        shape,
        contrast_limits_of(image_layer),
        options,
    )
    labels = run_to_completion(job)
    return new_labels_layer(image_layer, name, labels)


def propagate_label_through_stack(
    image_layer: Image,
    labels_layer: Labels,
    label_id: int,
    slice_index: Sequence[int],
    *,
    model: Any = "sam-vit-b",
    device: str = "auto",
    precision: str = "auto",
    axis: int = -1,
    overwrite: bool = False,
    **options: Any,
) -> dict[int, np.ndarray]:
    """Carry label ``label_id`` from one slice through the stack and write it, without a widget.

    Parameters
    ----------
    image_layer, labels_layer
        The stack and its labels (same spatial shape).
    label_id
        The object to propagate; it must be present on ``slice_index``.
    slice_index
        Leading-axis indices of the slice it was segmented on.
    axis
        Which leading axis to walk along (default: the last one, e.g. Z of a T×Z×Y×X stack).
    overwrite
        Paint over other labels (default: only background pixels).
    **options
        Other :class:`~napari_segany.sam.propagation.PropagationSettings` fields (``direction``,
        ``min_score``, ``min_area``, ``use_mask_prompt``, ...).

    Raises
    ------
    ValueError
        A 2D image, a slice index out of range, or ``label_id`` absent from that slice.

    Returns
    -------
    dict[int, np.ndarray]
        Index along ``axis`` → (H, W) bool mask, for every slice the object reached.
    """
    check_image_layer(image_layer)
    check_labels_fit(labels_layer, image_layer)
    if n_leading_axes(image_layer) == 0:
        raise ValueError("propagation needs a stack (3D or more), this image is 2D")
    slice_index = check_slice_key(image_layer, slice_index)
    start_mask = np.asarray(labels_layer.data[slice_index]) == label_id
    if not start_mask.any():
        raise ValueError(f"label {label_id} is not on slice {slice_index} of {labels_layer.name!r}")
    settings = PropagationSettings(axis=axis, **options)
    session = load_session(model, device, precision)
    segment_at = session.key_segmenter(
        str(image_layer.unique_id),
        lambda key: read_slice(image_layer, key),
        contrast_limits_of(image_layer),
    )
    job = propagate_along_axis(
        segment_at, spatial_shape(image_layer)[:-2], slice_index, start_mask, settings
    )
    result = run_to_completion(job)
    write_mask_on_slices(labels_layer, result.masks, label_id, overwrite=overwrite)
    axis_index = settings.resolved_axis(n_leading_axes(image_layer))
    return {key[axis_index]: mask for key, mask in result.masks.items()}
