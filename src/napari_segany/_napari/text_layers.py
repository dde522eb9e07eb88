"""Grounded SAM on napari layers (no Qt): text → rectangles, text → labels with phrases.

- :func:`segment_layer_with_text`: the scripting entry (``napari_segany.scripting``): every slice
  of an image layer → objects in a labels layer, phrase and score in its ``features``;
- :func:`detections_to_rectangles` / :func:`add_detections_to_shapes`: detected boxes as napari
  rectangles (row, col vertices), phrase and score as their text, for the user to edit;
- :func:`text_boxes_on_slice` and :func:`write_text_objects`: the widget's *Commit* of edited
  rectangles.

SAM boxes are ``[x0, y0, x1, y1]`` (x = column); napari rectangles are (row, col) vertices.
:func:`box_to_rectangle` and :func:`rectangle_to_box` are the only conversions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari.layer_io import (
    check_labels_fit,
    contrast_limits_of,
    n_leading_axes,
    new_labels_layer,
    read_slice,
)
from napari_segany._napari.sam_layers import check_image_layer, write_masks
from napari_segany.grounding.detector import clean_phrase
from napari_segany.sam.coordinates import corners_to_sam_box, xy_to_rowcol

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Shapes

    from napari_segany.grounding import Detections, GroundingDinoDetector, TextSegmentation

TEXT_FEATURES = ("phrase", "score")

__all__ = [
    "SliceResult",
    "add_detections_to_shapes",
    "box_to_rectangle",
    "detections_to_rectangles",
    "load_detector",
    "rectangle_to_box",
    "segment_layer_with_text",
    "segment_slices_job",
    "text_boxes_on_slice",
    "write_text_objects",
]


# -- coordinates ------------------------------------------------------------------------------


def box_to_rectangle(box: Sequence[float]) -> np.ndarray:
    """SAM box ``[x0, y0, x1, y1]`` → (4, 2) napari rectangle vertices ``(row, col)``.

    Through :func:`napari_segany.sam.coordinates.xy_to_rowcol`: the vertices lie on the pixel
    edges the box names.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    return xy_to_rowcol(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float))


def rectangle_to_box(vertices: np.ndarray) -> np.ndarray:
    """(K, 2) ``(row, col)`` vertices → SAM box ``[x0, y0, x1, y1]`` (inverse of the above)."""
    return corners_to_sam_box(np.asarray(vertices, dtype=float)[:, -2:])


# -- detector ---------------------------------------------------------------------------------


def load_detector(detector: Any, device: str = "auto", precision: str = "auto"):
    """A :class:`GroundingDinoDetector` from a name/path, a loaded model or a detector."""
    from napari_segany.grounding import GroundingDinoDetector, load_grounding_dino
    from napari_segany.grounding.loader import LoadedGroundingDino

    if isinstance(detector, GroundingDinoDetector):
        return detector
    if isinstance(detector, LoadedGroundingDino):
        return GroundingDinoDetector(detector)
    return GroundingDinoDetector(load_grounding_dino(detector, device=device, precision=precision))


# -- rectangles -------------------------------------------------------------------------------


def detections_to_rectangles(
    detections: Detections, image_layer: Image, shapes_layer: Shapes, slice_index: Sequence[int]
) -> list[np.ndarray]:
    """Detected boxes on one slice → rectangles in ``shapes_layer``'s data coordinates.

    Goes through world coordinates, so the layers may have different scales or translations;
    a 2D shapes layer over a stack gets the in-plane coordinates only.
    """
    lead = [float(i) for i in slice_index]
    rectangles = []
    for box in detections.boxes:
        image_data = [[*lead, *vertex] for vertex in box_to_rectangle(box)]
        world = [np.asarray(image_layer.data_to_world(p), dtype=float) for p in image_data]
        ndim = shapes_layer.ndim
        rectangles.append(
            np.array(
                [np.asarray(shapes_layer.world_to_data(w[-ndim:]), dtype=float) for w in world]
            )
        )
    return rectangles


def add_detections_to_shapes(
    shapes_layer: Shapes, image_layer: Image, slice_index: Sequence[int], detections: Detections
) -> int:
    """Add the detections as rectangles with ``phrase`` / ``score`` features and text.

    Returns the number of rectangles added.
    """
    import pandas as pd

    rectangles = detections_to_rectangles(detections, image_layer, shapes_layer, slice_index)
    if not rectangles:
        return 0
    before = len(shapes_layer.data)
    shapes_layer.add_rectangles(rectangles)
    features = shapes_layer.features.copy()
    count = len(features)
    phrases = list(features["phrase"]) if "phrase" in features.columns else [""] * count
    scores = list(features["score"]) if "score" in features.columns else [np.nan] * count
    phrases[before:] = [clean_phrase(p) for p in detections.phrases]
    scores[before:] = [float(v) for v in detections.scores]
    features["phrase"] = pd.Series(phrases, dtype=object, index=features.index)
    features["score"] = pd.Series(scores, dtype=float, index=features.index)
    shapes_layer.features = features
    defaults = {c: shapes_layer.feature_defaults[c].iloc[0] for c in shapes_layer.feature_defaults}
    shapes_layer.feature_defaults = {**defaults, "phrase": "", "score": np.nan}
    shapes_layer.text = {"string": "{phrase} {score:.2f}", "anchor": "upper_left", "size": 9}
    return len(rectangles)


def text_boxes_on_slice(
    shapes_layer: Shapes, image_layer: Image, slice_index: Sequence[int]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Rectangles on one slice with their phrase and score, after the user's edits.

    Returns SAM boxes (N, 4) ``[x0, y0, x1, y1]`` in the slice's pixels, phrases ("" for
    rectangles drawn by hand) and scores (NaN for those).
    """
    features = shapes_layer.features
    lead = np.asarray(slice_index, dtype=float)
    boxes, phrases, scores = [], [], []
    for index, (vertices, kind) in enumerate(
        zip(shapes_layer.data, shapes_layer.shape_type, strict=False)
    ):
        if kind != "rectangle":
            continue
        image_data = []
        for vertex in np.asarray(vertices, dtype=float):
            world = np.asarray(shapes_layer.data_to_world(vertex), dtype=float)
            if len(world) < image_layer.ndim:  # a 2D shapes layer over a stack: this slice
                plane = np.concatenate([lead, np.zeros(2)])
                full = np.asarray(image_layer.data_to_world(plane), dtype=float)
                full[-len(world) :] = world
                world = full
            image_data.append(np.asarray(image_layer.world_to_data(world), dtype=float))
        image_data = np.asarray(image_data)
        if len(lead) and not np.all(np.round(image_data[:, : len(lead)]) == lead):
            continue
        boxes.append(rectangle_to_box(image_data[:, -2:]))
        phrase = features["phrase"].iloc[index] if "phrase" in features.columns else ""
        score = features["score"].iloc[index] if "score" in features.columns else np.nan
        phrases.append(
            ""
            if phrase is None or (isinstance(phrase, float) and np.isnan(phrase))
            else str(phrase)
        )
        scores.append(float(score) if score is not None else np.nan)
    return np.asarray(boxes, dtype=float).reshape(-1, 4), phrases, np.asarray(scores, dtype=float)


# -- labels -----------------------------------------------------------------------------------


def write_text_objects(
    labels_layer: Labels,
    slice_index: Sequence[int],
    masks: Sequence[np.ndarray],
    phrases: Sequence[str],
    scores: Sequence[float],
    *,
    overwrite: bool = False,
) -> list[int]:
    """Write object masks as new labels and record their phrase and score in ``features``.

    Returns the label ids written (objects that changed no pixel get none).
    """
    ids = write_masks(labels_layer, slice_index, list(masks), overwrite=overwrite)
    if not ids:
        return []
    import pandas as pd

    features = labels_layer.features
    new = pd.DataFrame(
        {"index": ids, "phrase": list(phrases)[: len(ids)], "score": list(scores)[: len(ids)]}
    )
    if len(features) and "index" in features.columns:
        features = features[~features["index"].isin(ids)]
        features = pd.concat([features, new], ignore_index=True)
    else:
        features = new
    labels_layer.features = features
    return ids


@dataclass
class SliceResult:
    """What one slice of a text run produced."""

    slice_index: tuple[int, ...]
    result: TextSegmentation


def all_slices(image_layer: Image) -> list[tuple[int, ...]]:
    """Every 2D slice (leading-axis indices) of an image layer; ``[()]`` for a plane."""
    lead = n_leading_axes(image_layer)
    shape = np.asarray(image_layer.data.shape[:lead] if lead else (), dtype=int)
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*shape)] if lead else [()]


def segment_slices_job(
    image_layer_data: Callable[[tuple[int, ...]], np.ndarray],
    slices: Sequence[tuple[int, ...]],
    text: str,
    *,
    detector: GroundingDinoDetector,
    sam: Any,
    box_threshold: float,
    text_threshold: float,
    max_objects: int,
    contrast_limits: tuple[float, float] | None,
    layer_id: str,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[int, int, SliceResult]]:
    """Job: run :func:`segment_with_text` on every slice; yields ``(done, total, SliceResult)``.

    ``image_layer_data(slice_index)`` reads one slice (called in the job, off the GUI thread).
    Stops between slices when ``should_stop()`` returns True (and inside the detector's
    backbone, between blocks).
    """
    from napari_segany.grounding import segment_with_text

    total = len(slices)

    def on_block(done: int, blocks: int) -> None:
        if should_stop is not None and should_stop():
            raise InterruptedError("text segmentation cancelled")

    for done, slice_index in enumerate(slices, start=1):
        if should_stop is not None and should_stop():
            return
        image = image_layer_data(slice_index)
        key = None
        if hasattr(sam, "embedding_key"):
            key = sam.embedding_key(layer_id, slice_index, contrast_limits)
        result = segment_with_text(
            image,
            text,
            detector=detector,
            sam=sam,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            max_objects=max_objects,
            contrast_limits=contrast_limits,
            embedding_key=key,
            on_block=on_block,
        )
        yield done, total, SliceResult(tuple(slice_index), result)


def segment_layer_with_text(
    image_layer: Image,
    text: str,
    labels_layer: Labels | None = None,
    *,
    detector: Any = "grounding-dino-tiny",
    sam: Any = "sam-vit-b",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_objects: int = 100,
    slices: Sequence[Sequence[int]] | None = None,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    name: str = "Text labels",
) -> Labels:
    """Segment every object a text prompt names, on every slice of an image layer.

    Grounding DINO finds boxes for the prompt's phrases, SAM segments one object per box
    (:func:`napari_segany.grounding.segment_with_text`); new objects get the next free label ids
    and the labels layer's ``features`` gain rows ``index`` (label), ``phrase``, ``score``.

    Parameters
    ----------
    image_layer
        2D grayscale/RGB image or a stack; contrast limits drive the 8-bit scaling.
    text
        Phrases separated by ".", e.g. ``"nucleus. mitochondrion."``.
    labels_layer
        Where to write; a new layer (not added to any viewer) when ``None``.
    detector
        Grounding DINO registry name, hub id, folder or ``.pth``; or a loaded model / detector.
    sam
        SAM registry name, path, loaded model or ``InteractiveSamSession``.
    box_threshold, text_threshold, max_objects
        See :func:`napari_segany.grounding.segment_with_text`.
    slices
        Leading-axis indices of the slices to run; all slices by default.
    device, precision
        For models given by name or path.
    overwrite
        Paint over existing labels (default: only background pixels are written).
    name
        Name of the new labels layer.

    Returns
    -------
    napari.layers.Labels
        The labels layer (unchanged, with a warning, when nothing was found).

    Raises
    ------
    ValueError
        Empty text, text without words, more than 256 tokens, an image smaller than a patch,
        a labels layer of the wrong shape.
    """
    from napari_segany._napari.sam_scripting import load_session
    from napari_segany.grounding.preprocessing import normalize_prompt

    normalize_prompt(text)  # bad text fails before any model is loaded
    check_image_layer(image_layer)
    if labels_layer is None:
        labels_layer = new_labels_layer(image_layer, name)
    else:
        check_labels_fit(labels_layer, image_layer)
    found_detector = load_detector(detector, device, precision)
    session = load_session(sam, device, precision)
    chosen = (
        all_slices(image_layer) if slices is None else [tuple(int(i) for i in s) for s in slices]
    )
    total_objects = 0
    messages = []
    for _, _, done in segment_slices_job(
        lambda key: read_slice(image_layer, key),
        chosen,
        text,
        detector=found_detector,
        sam=session,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        max_objects=max_objects,
        contrast_limits=contrast_limits_of(image_layer),
        layer_id=str(image_layer.unique_id),
    ):
        result = done.result
        if result.is_empty:
            messages.append(result.message)
            continue
        masks = [result.labels == obj.label for obj in result.objects]
        ids = write_text_objects(
            labels_layer,
            done.slice_index,
            masks,
            [o.phrase for o in result.objects],
            [o.score for o in result.objects],
            overwrite=overwrite,
        )
        total_objects += len(ids)
    if total_objects == 0:
        warnings.warn(
            messages[0] if messages else f"no object of {text!r} was written", stacklevel=2
        )
    return labels_layer
