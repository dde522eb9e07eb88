"""Scripting SAM in napari: the widget's operations as plain functions on layers.

For scripted napari sessions (or notebooks) the same operations as the *Segment Anything* widget,
without clicking:

- :func:`segment_layers_with_sam`: points and rectangles → objects in a labels layer;
- :func:`segment_everything_in_layer`: automatic instance segmentation → a new labels layer;
- :func:`propagate_label_through_stack`: carry one label through the slices of a stack.

They also provide the background jobs (generators) the widget runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari.sam_layers import (
    boxes_on_slice,
    check_image_layer,
    check_labels_fit,
    check_prompts_inside,
    contrast_limits_of,
    n_leading_axes,
    new_labels_layer,
    points_on_slice,
    prompt_slices,
    read_slice,
    spatial_shape,
    write_mask_on_slices,
    write_masks,
)
from napari_segany.jobs import run_to_completion
from napari_segany.sam.interactive_session import EmbeddingKey, InteractiveSamSession, SamPrompts

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points, Shapes


# -- scripting --------------------------------------------------------------------------------


def load_session(
    model: Any = "sam-vit-b", device: str = "auto", precision: str = "auto"
) -> InteractiveSamSession:
    """An :class:`InteractiveSamSession` on a model given by name/path or already loaded.

    ``model`` may also be an existing session, returned as it is (so its cache is reused).
    """
    if isinstance(model, InteractiveSamSession):
        return model
    session = InteractiveSamSession()
    if isinstance(model, str):
        from napari_segany.sam import load_sam

        loaded = load_sam(model, device=device, precision=precision)
        session.set_model(loaded, f"{model}|{device}", precision)
    else:
        session.set_model(model, f"model-{id(model)}", precision)
    return session


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
        session.activate(key)
        session.set_prompts(prompts)
        session.predict()
        session.candidate_offset = candidate
        write_masks(labels_layer, slice_index, session.chosen_masks(), overwrite=overwrite)
    return labels_layer


def segment_everything_job(
    predictor: Any,
    read: Callable[[tuple[int, ...]], np.ndarray],
    slice_indices: Sequence[tuple[int, ...]],
    shape: tuple[int, ...],
    contrast_limits: tuple[float, float] | None,
    options: dict[str, Any],
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Job: automatic segmentation of some 2D slices into one int32 label volume of ``shape``.

    Each slice is segmented by :func:`napari_segany.sam.automatic.segment_everything`; labels of
    later slices are offset so that ids are unique across the whole volume. Yields overall
    ``(done, total)`` (the per-slice progress of the pipeline scaled into the slice's share).
    """
    from napari_segany.sam.automatic import segment_everything

    labels = np.zeros(shape, dtype=np.int32)
    scale = 1000
    total = scale * len(slice_indices)
    offset = 0
    yield 0, total
    for n, slice_index in enumerate(slice_indices):
        job = segment_everything(
            predictor, read(slice_index), contrast_limits=contrast_limits, **options
        )
        while True:
            try:
                done, sub_total = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            yield n * scale + int(scale * done / max(sub_total, 1)), total
        plane = np.asarray(result.labels, dtype=np.int32)
        labels[tuple(slice_index)] = np.where(plane > 0, plane + offset, 0)
        offset = max(offset, int(labels[tuple(slice_index)].max(initial=0)))
        yield (n + 1) * scale, total
    return labels


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
    session = load_session(model, device, precision)
    from napari_segany.sam import SamPredictor

    shape = spatial_shape(image_layer)
    slices = [tuple(slice_index)] if slice_index is not None else list(np.ndindex(*shape[:-2]))
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


def propagation_slice_segmenter(
    session: InteractiveSamSession,
    image_layer: Image,
    slice_index: Sequence[int],
    axis: int,
) -> Callable[[int, SamPrompts], Any]:
    """``segment_slice(i, prompts)`` for propagation along leading axis ``axis`` from ``slice_index``."""
    layer_id = str(image_layer.unique_id)
    limits = contrast_limits_of(image_layer)
    base = list(slice_index)

    def segment_slice(i: int, prompts: SamPrompts) -> Any:
        index = base.copy()
        index[axis] = i
        key: EmbeddingKey = session.embedding_key(layer_id, index, limits)
        return session.segment_slice(key, lambda: read_slice(image_layer, index), prompts)

    return segment_slice


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
        Passed to :func:`napari_segany.sam.propagation.propagate_through_stack`.

    Returns
    -------
    dict[int, np.ndarray]
        Index along ``axis`` → (H, W) bool mask, for every slice the object reached.
    """
    from napari_segany.sam.propagation import propagate_through_stack

    check_image_layer(image_layer)
    check_labels_fit(labels_layer, image_layer)
    session = load_session(model, device, precision)
    lead = n_leading_axes(image_layer)
    if lead == 0:
        raise ValueError("propagation needs a stack (3D or more), this image is 2D")
    axis = axis % lead
    start_mask = np.asarray(labels_layer.data[tuple(slice_index)]) == label_id
    job = propagate_through_stack(
        propagation_slice_segmenter(session, image_layer, slice_index, axis),
        spatial_shape(image_layer)[axis],
        int(slice_index[axis]),
        start_mask,
        **options,
    )
    result = run_to_completion(job)
    write_mask_on_slices(
        labels_layer, along_axis(result.masks, slice_index, axis), label_id, overwrite=overwrite
    )
    return result.masks


def along_axis(
    masks: dict[int, np.ndarray], slice_index: Sequence[int], axis: int
) -> dict[tuple[int, ...], np.ndarray]:
    """Re-key masks found along one leading axis by their full slice index."""
    out = {}
    for i, mask in sorted(masks.items()):
        index = list(slice_index)
        index[axis] = i
        out[tuple(index)] = mask
    return out
