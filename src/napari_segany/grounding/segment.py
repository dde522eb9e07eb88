"""Grounded SAM: text → Grounding DINO boxes → one batched SAM decoder call → a label image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_segany.grounding.detector import Detections, GroundingDinoDetector, clean_phrase
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam.box_nms import non_maximum_suppression
from napari_segany.sam.mask_records import MaskCandidates, paint_labels

DEFAULT_MAX_OBJECTS = 100
DEFAULT_NMS_IOU = 0.8


@dataclass(frozen=True)
class TextObject:
    """One segmented object.

    Attributes
    ----------
    label
        Its id in :attr:`TextSegmentation.labels`.
    phrase
        The prompt words its box matched (delimiters and the final "." removed).
    score
        The detector's confidence of its box.
    box
        ``(x0, y0, x1, y1)`` float pixels of the detected box (x = column).
    """

    label: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]


@dataclass
class TextSegmentation:
    """Result of :func:`segment_with_text`.

    Attributes
    ----------
    labels
        (H, W) int32 label image, 0 background.
    objects
        One entry per label, in label order.
    detections
        Every box kept after NMS and the cap (also those whose mask got no pixels).
    message
        Human-readable summary ("3 objects: nucleus (2), cell (1)" or why nothing was found).
    """

    labels: np.ndarray
    objects: list[TextObject] = field(default_factory=list)
    detections: Detections = field(default_factory=Detections)
    message: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.objects


def segment_with_text(
    image: np.ndarray,
    text: str,
    *,
    detector: GroundingDinoDetector,
    sam: Any,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    nms_iou: float = DEFAULT_NMS_IOU,
    contrast_limits: tuple[float, float] | None = None,
    embedding_key: Any = None,
    on_block=None,
) -> TextSegmentation:
    """Segment every object a text prompt names.

    Grounding DINO finds boxes for the prompt's phrases; overlapping boxes (IoU above
    ``nms_iou``, whatever their phrase) are merged by NMS keeping the higher score; at most
    ``max_objects`` boxes (highest scores) are kept; SAM decodes one mask per box in a single
    batched call; masks are painted smallest first (:func:`napari_segany.sam.mask_records.
    paint_labels`), so an object lying on a larger one keeps its pixels.

    Parameters
    ----------
    image
        (H, W) grayscale or (H, W, 3|4) RGB(A), any numeric dtype.
    text
        Phrases separated by ".", e.g. ``"nucleus. mitochondrion."``.
    detector
        A :class:`GroundingDinoDetector`.
    sam
        A SAM model (``load_sam``), a :class:`napari_segany.sam.SamPredictor` (its image is set
        here) or an :class:`napari_segany.sam.interactive_session.InteractiveSamSession` (its
        embedding cache is used with ``embedding_key``, so an embedding is computed only once).
    box_threshold, text_threshold
        Detector thresholds (see :meth:`GroundingDinoDetector.detect`).
    max_objects
        Cap on the number of objects (default 100), highest scores first.
    nms_iou
        Boxes overlapping more than this are duplicates.
    contrast_limits
        (low, high) for the 8-bit conversion of both models.
    embedding_key
        With a session: the cache key of this image (from ``session.embedding_key``).
    on_block
        ``on_block(done, total)`` during the detector's backbone.

    Returns
    -------
    TextSegmentation
        Empty labels and a message saying so when nothing passes the threshold.

    Raises
    ------
    ValueError
        Empty text, text without words, more than 256 tokens, an image smaller than a patch,
        ``max_objects`` < 1.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    rgb = to_uint8_rgb(image, contrast_limits)
    shape = rgb.shape[:2]
    found = detector.detect(rgb, text, box_threshold, text_threshold, on_block=on_block)
    empty = np.zeros(shape, dtype=np.int32)
    if len(found) == 0:
        return TextSegmentation(
            empty,
            detections=found,
            message=f"nothing matched {text.strip()!r} above box threshold {box_threshold:.2f}; "
            f"lower the threshold or rephrase",
        )
    keep = non_maximum_suppression(
        torch.from_numpy(found.boxes), torch.from_numpy(found.scores), nms_iou
    )[:max_objects]
    found = found.select(keep.numpy())
    predictor = _predictor_with_image(sam, rgb, embedding_key)
    masks, mask_scores, _ = predictor.predict(box=found.boxes, multimask_output=False)
    masks = np.asarray(masks).reshape(len(found), *shape)
    candidates = _candidates(masks, found.scores)
    labels, painted = paint_labels(candidates, shape)
    objects = [
        TextObject(
            label=label,
            phrase=clean_phrase(found.phrases[index]),
            score=float(found.scores[index]),
            box=tuple(float(v) for v in found.boxes[index]),
        )
        for label, index in enumerate(painted, start=1)
    ]
    return TextSegmentation(labels, objects, found, _summary(objects, len(found)))


def _predictor_with_image(sam: Any, rgb: np.ndarray, embedding_key: Any):
    from napari_segany.sam.predictor import SamPredictor

    if hasattr(sam, "embed_now") and hasattr(sam, "cache"):  # an InteractiveSamSession
        predictor = SamPredictor(sam.model)
        if embedding_key is None:
            predictor.set_image(rgb)
        else:
            predictor.set_embedding_state(sam.embed_now(embedding_key, rgb))
        return predictor
    if hasattr(sam, "predict") and hasattr(sam, "set_image"):  # a SamPredictor
        sam.set_image(rgb)
        return sam
    if isinstance(sam, torch.nn.Module):
        predictor = SamPredictor(sam)
        predictor.set_image(rgb)
        return predictor
    raise TypeError(
        f"sam must be a SAM model, a SamPredictor or an InteractiveSamSession, not {type(sam)}"
    )


def _candidates(masks: np.ndarray, scores: np.ndarray) -> MaskCandidates:
    candidates = MaskCandidates()
    boxes, crops = [], []
    for mask in masks:
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            boxes.append([0, 0, 0, 0])
            crops.append(torch.zeros(1, 1, dtype=torch.bool))
            continue
        x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
        boxes.append([x0, y0, x1, y1])
        crops.append(torch.from_numpy(np.ascontiguousarray(mask[y0 : y1 + 1, x0 : x1 + 1])))
    candidates.boxes = torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)
    candidates.crops = crops
    candidates.predicted_iou = torch.as_tensor(scores, dtype=torch.float32)
    candidates.stability_score = torch.ones(len(crops))
    return candidates


def _summary(objects: list[TextObject], boxes: int) -> str:
    if not objects:
        return f"{boxes} box(es) found but SAM returned empty masks for all of them"
    counts: dict[str, int] = {}
    for obj in objects:
        counts[obj.phrase] = counts.get(obj.phrase, 0) + 1
    parts = ", ".join(f"{phrase or '?'} ({n})" for phrase, n in counts.items())
    return f"{len(objects)} object(s): {parts}"
