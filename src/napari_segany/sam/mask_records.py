"""Kept masks of "segment everything": compact storage, records, clean-up and the label image.

Masks are stored cropped to their box (``MaskCandidates``), so memory grows with the area of the
objects, not with (number of masks) x (image area). Boxes are ``[x0, y0, x1, y1]`` with inclusive
``x1``/``y1`` (segment-anything convention); coordinates are (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class MaskCandidates:
    """A set of binary masks with their scores, each mask cropped to its box.

    Attributes
    ----------
    boxes
        (N, 4) int64 ``[x0, y0, x1, y1]`` (inclusive ends) in the frame named by ``origin``.
    crops
        N bool tensors; crop ``i`` has shape ``(y1 - y0 + 1, x1 - x0 + 1)`` of box ``i``.
    predicted_iou, stability_score
        (N,) float32 model quality estimate and stability under threshold changes.
    points
        (N, 2) float64 (x, y) point prompt that produced each mask.
    crop_boxes
        (N, 4) int64 ``[x0, y0, x1, y1]`` (exclusive ends) of the crop or tile each mask came from.
    low_res
        (N, L, L) low-resolution logits of masks not made yet, or None. While it is set,
        ``crops`` is empty: segment everything keeps 128-256 KB a candidate until non-maximum
        suppression has chosen the few whose masks are made
        (:meth:`~napari_segany.sam.point_decoding.PointPromptDecoder.make_masks`), instead of a
        crop that can be as large as the image for every candidate.
    """

    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    crops: list[torch.Tensor] = field(default_factory=list)
    predicted_iou: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability_score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    low_res: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.crops) if self.low_res is None else len(self.low_res)

    @property
    def areas(self) -> torch.Tensor:
        """(N,) int64 number of pixels of each mask."""
        return torch.as_tensor([int(c.sum()) for c in self.crops], dtype=torch.long)

    def select(self, keep: torch.Tensor) -> MaskCandidates:
        """Subset by a bool mask or by int64 indices (kept in that order)."""
        keep = torch.as_tensor(keep)
        indices = keep.nonzero()[:, 0] if keep.dtype == torch.bool else keep.long()
        indices = indices.cpu()
        return MaskCandidates(
            boxes=self.boxes[indices],
            crops=[self.crops[i] for i in indices.tolist()] if self.low_res is None else [],
            predicted_iou=self.predicted_iou[indices],
            stability_score=self.stability_score[indices],
            points=self.points[indices],
            crop_boxes=self.crop_boxes[indices],
            low_res=None if self.low_res is None else self.low_res[indices],
        )

    def shifted(self, dx: int, dy: int) -> MaskCandidates:
        """The same masks with boxes, points and crop boxes moved by (dx, dy) pixels."""
        offset = torch.as_tensor([dx, dy, dx, dy], dtype=torch.long)
        return MaskCandidates(
            boxes=self.boxes + offset,
            crops=self.crops,
            predicted_iou=self.predicted_iou,
            stability_score=self.stability_score,
            points=self.points + torch.as_tensor([dx, dy], dtype=torch.float64),
            crop_boxes=self.crop_boxes + offset,
            low_res=self.low_res,
        )

    @staticmethod
    def concatenate(parts: list[MaskCandidates]) -> MaskCandidates:
        """All candidates of ``parts`` in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return MaskCandidates()
        pending = {p.low_res is not None for p in parts}
        if len(pending) > 1:
            raise ValueError("cannot concatenate candidates with masks and candidates without")
        return MaskCandidates(
            boxes=torch.cat([p.boxes for p in parts]),
            crops=[c for p in parts for c in p.crops],
            predicted_iou=torch.cat([p.predicted_iou for p in parts]),
            stability_score=torch.cat([p.stability_score for p in parts]),
            points=torch.cat([p.points for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
            low_res=torch.cat([p.low_res for p in parts]) if pending == {True} else None,
        )

    def full_mask(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """Mask ``index`` pasted into an all-False (H, W) bool array."""
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = self.boxes[index].tolist()
        out[y0 : y1 + 1, x0 : x1 + 1] = self.crops[index].cpu().numpy()
        return out

    def to_records(self, shape: tuple[int, int]) -> list[dict[str, Any]]:
        """Records in the official ``SamAutomaticMaskGenerator.generate`` format.

        Keys: ``segmentation`` ((H, W) bool), ``area`` (int), ``bbox`` (XYWH, ints, W = x1 - x0
        as in the reference), ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``
        and ``crop_box`` (XYWH).
        """
        records = [self.record(i) for i in range(len(self))]
        for i, record in enumerate(records):
            record["segmentation"] = self.full_mask(i, shape)
        return records

    def record(self, index: int) -> dict[str, Any]:
        """Record ``index`` without the full-size ``segmentation`` (see :meth:`to_records`)."""
        x0, y0, x1, y1 = self.boxes[index].tolist()
        cx0, cy0, cx1, cy1 = self.crop_boxes[index].tolist()
        return {
            "area": int(self.crops[index].sum()),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(self.predicted_iou[index]),
            "point_coords": [self.points[index].tolist()],
            "stability_score": float(self.stability_score[index]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        }


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed run-length encoding of an (H, W) bool mask (column-major runs,
    starting with a run of False), as the official generator's ``output_mode="uncompressed_rle"``.
    """
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [height, width], "counts": counts}


def stability_score(
    logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of the masks obtained by thresholding logits at ``threshold +/- offset``.

    The high-threshold mask is inside the low-threshold one, so the IoU is a ratio of pixel
    counts. Empty low-threshold masks give NaN (0 / 0).

    Parameters
    ----------
    logits
        (N, H, W) float mask logits.

    Returns
    -------
    torch.Tensor
        (N,) float32.
    """
    inner = (logits > (mask_threshold + threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    outer = (logits > (mask_threshold - threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    return inner / outer


def crop_to_boxes(masks: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
    """Cut each (H, W) bool mask of (N, H, W) ``masks`` to its (N, 4) inclusive box (copies)."""
    return [
        mask[y0 : y1 + 1, x0 : x1 + 1].clone()
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist(), strict=True)
    ]


def records_to_label_image(records: list[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """Turn mask records into one non-overlapping instance label image.

    Rule: masks are painted from the smallest to the largest (ties: higher
    ``predicted_iou * stability_score`` first) and every pixel belongs to the first mask that
    covers it. So an object lying on a larger one (a nucleus on a cell) keeps its own label, and
    the larger object keeps all its other pixels: a mask is never erased by smaller ones unless
    they cover it completely. Masks left without pixels get no label. Labels are 1..K in
    painting order; 0 is background.

    Parameters
    ----------
    records
        Records as returned by :meth:`SamAutomaticMaskGenerator.generate` (``segmentation`` is an
        (H, W) bool array; ``area``, ``predicted_iou`` and ``stability_score`` are used when
        present).
    shape
        (H, W) of the label image.

    Returns
    -------
    np.ndarray
        (H, W) int32 labels.
    """
    candidates = MaskCandidates()
    crops, boxes = [], []
    for record in records:
        mask = torch.as_tensor(np.asarray(record["segmentation"], dtype=bool))
        if mask.shape != tuple(shape):
            raise ValueError(
                f"segmentation of shape {tuple(mask.shape)} != label shape {tuple(shape)}"
            )
        box = _tight_box(mask)
        boxes.append(box)
        crops.append(mask[box[1] : box[3] + 1, box[0] : box[2] + 1])
    candidates.crops = crops
    candidates.boxes = torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)
    candidates.predicted_iou = torch.as_tensor(
        [float(r.get("predicted_iou", 1.0)) for r in records], dtype=torch.float32
    )
    candidates.stability_score = torch.as_tensor(
        [float(r.get("stability_score", 1.0)) for r in records], dtype=torch.float32
    )
    labels, _ = paint_labels(candidates, shape)
    return labels


def painting_order(candidates: MaskCandidates) -> list[int]:
    """Indices by increasing area, ties by decreasing predicted_iou x stability_score."""
    areas = candidates.areas.tolist()
    quality = (candidates.predicted_iou * candidates.stability_score).nan_to_num(0.0).tolist()
    return sorted(range(len(candidates)), key=lambda i: (areas[i], -quality[i], i))


def paint_labels(
    candidates: MaskCandidates, shape: tuple[int, int]
) -> tuple[np.ndarray, list[int]]:
    """Paint candidates into an (H, W) int32 label image with the rule of :func:`records_to_label_image`.

    Returns
    -------
    labels
        (H, W) int32, 0 background, objects 1..K.
    painted
        Candidate index of label ``k`` at position ``k - 1``.
    """
    labels = np.zeros(shape, dtype=np.int32)
    painted: list[int] = []
    for index in painting_order(candidates):
        x0, y0, x1, y1 = candidates.boxes[index].tolist()
        crop = candidates.crops[index].cpu().numpy()
        region = labels[y0 : y1 + 1, x0 : x1 + 1]
        free = crop & (region == 0)
        if not free.any():
            continue
        painted.append(index)
        region[free] = len(painted)
    return labels, painted


def _tight_box(mask: torch.Tensor) -> list[int]:
    rows = torch.nonzero(mask.any(dim=1))[:, 0]
    cols = torch.nonzero(mask.any(dim=0))[:, 0]
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]
