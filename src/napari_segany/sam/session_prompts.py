"""Prompts and per-object predictions of an interactive SAM session, as plain numpy.

:class:`SamPrompts` holds one slice's points and boxes in napari ``(row, col)`` order;
:func:`group_points_by_box` splits them into objects; :class:`ObjectPrediction` keeps one object's
candidate masks and scores; :func:`mask_to_mask_input` turns a labelled mask into SAM's mask prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

LOW_RES_MASK_SIZE = 256
"""Side of SAM's low-resolution mask grid (the decoder's mask prompt and logits output)."""
MASK_PROMPT_LOGIT = 8.0
"""Logit given to pixels inside (+) and outside (−) a mask turned into a mask prompt."""


def mask_to_mask_input(mask: np.ndarray, low_res_size: int = LOW_RES_MASK_SIZE) -> np.ndarray:
    """Turn a binary mask of the whole image into SAM's mask prompt (low-resolution logits).

    SAM's mask prompt lives on the decoder's low-resolution grid: the image resized so its longest
    side is ``low_res_size`` and padded at the bottom and right to a square.

    Parameters
    ----------
    mask
        (H, W) boolean mask, image coordinates.
    low_res_size
        Side of the low-resolution grid (256 for SAM).

    Returns
    -------
    np.ndarray
        (1, low_res_size, low_res_size) float32 logits: ``+MASK_PROMPT_LOGIT`` inside,
        ``-MASK_PROMPT_LOGIT`` outside and in the padding.
    """
    from skimage.transform import resize

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    height, width = mask.shape
    scale = low_res_size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = resize(mask.astype(np.float32), (new_h, new_w), order=1, anti_aliasing=True)
    out = np.full((1, low_res_size, low_res_size), -MASK_PROMPT_LOGIT, dtype=np.float32)
    out[0, :new_h, :new_w] = np.where(small >= 0.5, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)
    return out


@dataclass
class SamPrompts:
    """Prompts of the object(s) under edit, in the 2D slice's data coordinates (row, col).

    Attributes
    ----------
    points_rc
        (N, 2) float point positions ``(row, col)``.
    point_labels
        (N,) int, 1 for positive (object) points, 0 for negative (background) points.
    boxes_corners
        One (K, 2) array of ``(row, col)`` vertices per box (napari rectangle corners).
    mask
        (H, W) bool mask of the object being refined (used as SAM's mask prompt), or ``None``.
    """

    points_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    boxes_corners: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        """No point and no box (a mask alone is not a prompt)."""
        return len(self.points_rc) == 0 and len(self.boxes_corners) == 0


class ObjectPrediction:
    """SAM's candidates for one object.

    Attributes
    ----------
    masks
        (C, H, W) bool candidate masks (C = 3 with multimask output). When the prediction was
        made with ``upscale`` (the interactive preview), the full-size masks are made on first
        use; :meth:`mask` upscales one candidate only.
    scores
        (C,) float predicted IoU of each candidate.
    low_res_logits
        (C, L, L) float logits on the low-resolution grid (a mask prompt for refinement).
    """

    def __init__(
        self,
        masks: np.ndarray | None,
        scores: np.ndarray,
        low_res_logits: np.ndarray,
        upscale: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        if masks is None and upscale is None:
            raise ValueError("an ObjectPrediction needs masks or a way to upscale them")
        self._masks = masks
        self.scores = scores
        self.low_res_logits = low_res_logits
        self._upscale = upscale
        self._upscaled: dict[int, np.ndarray] = {}

    @property
    def masks(self) -> np.ndarray:
        """(C, H, W) bool candidate masks."""
        if self._masks is None:
            self._masks = np.stack([self.mask(i) for i in range(len(self.scores))])
        return self._masks

    def mask(self, index: int) -> np.ndarray:
        """(H, W) bool mask of candidate ``index`` (upscaled on first use if needed)."""
        if self._masks is not None:
            return self._masks[index]
        if index not in self._upscaled:
            self._upscaled[index] = np.asarray(self._upscale(int(index)), dtype=bool)
        return self._upscaled[index]

    def ranked(self) -> np.ndarray:
        """Candidate indices, best predicted IoU first."""
        return np.argsort(-np.asarray(self.scores), kind="stable")


def group_points_by_box(
    points_rc: np.ndarray, boxes_corners: Sequence[np.ndarray]
) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Split prompts into objects: one per box, or one for all points when there is no box.

    A point belongs to the first box that contains it, else to the box whose centre is nearest.

    Parameters
    ----------
    points_rc
        (N, 2) point positions ``(row, col)``.
    boxes_corners
        One (K, 2) vertex array per box.

    Returns
    -------
    list of (box_corners or None, point indices (M,) int)
        Empty when there is neither a point nor a box.
    """
    points_rc = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    if not boxes_corners:
        return [(None, np.arange(len(points_rc)))] if len(points_rc) else []
    lows = np.array([np.min(c, axis=0) for c in boxes_corners])
    highs = np.array([np.max(c, axis=0) for c in boxes_corners])
    owner = np.empty(len(points_rc), dtype=np.int64)
    for i, point in enumerate(points_rc):
        inside = np.flatnonzero(np.all((point >= lows) & (point <= highs), axis=1))
        if len(inside):
            owner[i] = inside[0]
        else:
            owner[i] = int(np.argmin(np.linalg.norm((lows + highs) / 2 - point, axis=1)))
    return [(np.asarray(c), np.flatnonzero(owner == b)) for b, c in enumerate(boxes_corners)]
