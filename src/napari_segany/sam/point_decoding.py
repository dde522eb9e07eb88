"""Decoding batches of single-point prompts into filtered, box-cropped masks.

This is the per-batch step of "segment everything". Unlike the official generator it filters
by predicted IoU on the low-resolution output, so that only surviving masks are upscaled to
full resolution, and it upscales them in chunks of bounded memory. With ``defer_masks`` (what
the generator uses) a candidate is scored from its full-size logits only inside the window where
they can pass the lowest threshold, and waits for non-maximum suppression as its low-resolution
logits; :meth:`PointPromptDecoder.make_masks` then makes the masks of the kept ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from napari_segany.sam.box_nms import boxes_near_crop_edge, masks_to_boxes
from napari_segany.sam.mask_records import MaskCandidates, crop_to_boxes, stability_score
from napari_segany.sam.mask_upscaling import block_bands, block_window

SCORE_BAND_ELEMENTS = 1 << 20
"""Full-size logits of one candidate scored at once (4 MB). A candidate spread over a 4096²
image (2 cores): 24.5 ms in bands of this size, 122 ms in bands of 16 MB, whose temporaries were
mapped and faulted in afresh (65 000 page faults a candidate, none here)."""


class PointPromptDecoder:
    """Wraps a SAM predictor for batched point-grid decoding.

    Parameters
    ----------
    model
        A :class:`napari_segany.sam.SamPredictor` (or anything with its ``set_image``,
        ``apply_coords``, ``get_image_embedding``, ``postprocess_masks`` and a ``model.decode``;
        a predictor with only ``predict_torch`` also works, upscaling every candidate), or a SAM
        model of this package, which is wrapped in a ``SamPredictor``. (Tests drive the official
        ``segment_anything`` predictor through an adapter with this interface.)
    """

    def __init__(self, model: Any) -> None:
        self.predictor = _as_predictor(model)
        self.replaced_embedding = False

    # -- embedding ------------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray) -> None:
        """Compute the embedding of an (H, W, 3) uint8 RGB image."""
        self.predictor.set_image(rgb)
        self.replaced_embedding = True

    def has_embedding_for(self, shape: tuple[int, int]) -> bool:
        """Whether the predictor holds an embedding of an image of this (H, W) size."""
        if not getattr(self.predictor, "is_image_set", False):
            return False
        return tuple(self.predictor.original_size) == tuple(shape)

    def save_embedding(self) -> Any:
        """The predictor's embedding state, or None when it has none or cannot export it."""
        getter = getattr(self.predictor, "get_embedding_state", None)
        self.replaced_embedding = False
        if getter is None or not getattr(self.predictor, "is_image_set", False):
            return None
        return getter()

    def restore_embedding(self, state: Any) -> None:
        """Put back a state from :meth:`save_embedding` if :meth:`set_image` replaced it."""
        if state is not None and self.replaced_embedding:
            self.predictor.set_embedding_state(state)

    # -- decoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_points(
        self,
        points: np.ndarray,
        crop_box: list[int],
        image_box: list[int],
        *,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        stability_score_offset: float,
        chunk_bytes: int,
        defer_masks: bool = False,
    ) -> MaskCandidates:
        """Masks of the three multimask outputs of each point, filtered as the reference does.

        Filters, in order: predicted IoU ``> pred_iou_thresh`` (if > 0), stability
        ``>= stability_score_thresh`` (if > 0), box not within 20 px of a crop edge that is not
        an image edge.

        Parameters
        ----------
        points
            (N, 2) float64 (x, y) in pixels of the current (cropped) image.
        crop_box, image_box
            ``[x0, y0, x1, y1]`` of the crop within the image, and of the image.
        defer_masks
            Keep each candidate's low-resolution logits instead of its mask
            (``MaskCandidates.low_res``); :meth:`make_masks` makes the masks of those chosen
            later. Only with a predictor that gives low-resolution logits (otherwise the masks
            are made at once).

        Returns
        -------
        MaskCandidates
            In the crop's frame (``crop_boxes`` all zero, set by the caller).
        """
        predictor = self.predictor
        original_size = tuple(predictor.original_size)
        coords = self._to_input_frame(points, original_size)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        low_res, iou, full_res = self._decode(coords[:, None, :], labels[:, None])
        n_masks = iou.shape[1]
        iou = iou.flatten(0, 1).float()
        all_points = torch.as_tensor(points.repeat(n_masks, axis=0))

        keep = torch.ones_like(iou, dtype=torch.bool)
        if pred_iou_thresh > 0.0:
            keep = iou > pred_iou_thresh
        indices = keep.nonzero()[:, 0]
        source = full_res if full_res is not None else low_res
        source = source.flatten(0, 1)

        mask_threshold = _mask_threshold(predictor)
        chunk = self._masks_per_chunk(chunk_bytes)
        defer = defer_masks and full_res is None
        if defer and hasattr(predictor, "_frame_block"):  # this package's predictor
            scores = [
                self._window_scores(source[i], mask_threshold, stability_score_offset)
                for i in indices.tolist()
            ]
            stability = torch.stack([s for s, _ in scores]) if scores else torch.zeros(0)
            boxes = torch.stack([b for _, b in scores]) if scores else torch.zeros(0, 4)
            passed = torch.ones_like(stability, dtype=torch.bool)
            if stability_score_thresh > 0.0:
                passed = stability >= stability_score_thresh
            boxes = boxes[passed].long()
            inside = ~boxes_near_crop_edge(boxes, crop_box, image_box)
            chosen = indices.cpu()[passed][inside]
            return MaskCandidates(
                boxes=boxes[inside],
                predicted_iou=iou[chosen.to(iou.device)].cpu(),
                stability_score=stability[passed][inside],
                points=all_points[chosen],
                crop_boxes=torch.zeros(len(chosen), 4, dtype=torch.long),
                low_res=source[chosen.to(source.device)].cpu(),
            )
        # Any other predictor: whole maps, a chunk of candidates at a time.
        parts = []
        for start in range(0, len(indices), chunk):
            chosen = indices[start : start + chunk]
            logits = source[chosen.to(source.device)].float()
            if full_res is None:
                logits = self._upscale(logits, original_size)
            stability = stability_score(logits, mask_threshold, stability_score_offset)
            passed = torch.ones_like(stability, dtype=torch.bool)
            if stability_score_thresh > 0.0:
                passed = stability >= stability_score_thresh
            masks = logits[passed] > mask_threshold
            del logits
            boxes = masks_to_boxes(masks)
            inside = ~boxes_near_crop_edge(boxes, crop_box, image_box)
            boxes = boxes[inside].cpu()
            chosen = chosen[passed.to(chosen.device)][inside.to(chosen.device)].cpu()
            if defer:
                crops, pending = [], source[chosen.to(source.device)].cpu()
            else:  # one transfer per chunk
                crops, pending = crop_to_boxes(masks[inside].cpu(), boxes), None
            parts.append(
                MaskCandidates(
                    boxes=boxes,
                    crops=crops,
                    predicted_iou=iou[chosen.to(iou.device)].cpu(),
                    stability_score=stability[passed][inside].cpu(),
                    points=all_points[chosen],
                    crop_boxes=torch.zeros(len(boxes), 4, dtype=torch.long),
                    low_res=pending,
                )
            )
        return MaskCandidates.concatenate(parts)

    @torch.no_grad()
    def make_masks(self, candidates: MaskCandidates, chunk_bytes: int) -> MaskCandidates:
        """The masks of candidates that :meth:`decode_points` returned with ``defer_masks``,
        cropped to their boxes: the same masks it makes otherwise (the same logits upscaled
        the same way). Call it while the predictor still holds the image of those points."""
        if candidates.low_res is None:
            return candidates
        predictor = self.predictor
        threshold = _mask_threshold(predictor)
        size = tuple(predictor.original_size)
        crops = []
        if hasattr(predictor, "_frame_block"):  # this package's predictor: each box's window
            for low_res, (x0, y0, x1, y1) in zip(
                candidates.low_res, candidates.boxes.tolist(), strict=True
            ):
                crop = torch.zeros(y1 - y0 + 1, x1 - x0 + 1, dtype=torch.bool)
                block = predictor._frame_block(low_res)
                if block is not None:  # else empty: masks_to_boxes' box of an empty mask
                    box_window = (y0, y1 + 1, x0, x1 + 1)
                    for start, logits in block_bands(block, size, box_window, SCORE_BAND_ELEMENTS):
                        crop[start - y0 : start - y0 + len(logits)] = logits > threshold
                crops.append(crop)
            return replace(candidates, crops=crops, low_res=None)
        device = getattr(predictor, "device", None) or predictor.model.device
        chunk = self._masks_per_chunk(chunk_bytes)
        for start in range(0, len(candidates), chunk):
            logits = candidates.low_res[start : start + chunk].to(device).float()
            masks = self._upscale(logits, size) > threshold
            crops += crop_to_boxes(masks.cpu(), candidates.boxes[start : start + chunk])
        return replace(candidates, crops=crops, low_res=None)

    def _window_scores(
        self, low_res: torch.Tensor, mask_threshold: float, offset: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability score (float32) and box ((4,) int64) of one (L, L) candidate: those of
        :func:`stability_score` and :func:`masks_to_boxes` on its full-size logits, which are
        computed only inside the window where they can exceed ``mask_threshold - offset``, a band
        of rows at a time (a compact object on a large image costs its window, and no candidate
        needs a buffer of the image's size)."""
        predictor = self.predictor
        low, high = mask_threshold - offset, mask_threshold + offset
        size = tuple(predictor.original_size)
        inner = outer = 0
        box = [size[1], size[0], -1, -1]  # x0, y0, x1, y1 (inclusive)
        block = predictor._frame_block(low_res, threshold=low)
        window = None if block is None else block_window(block, size, low)
        if window is not None:
            col0 = window[2]
            for start, logits in block_bands(block, size, window, SCORE_BAND_ELEMENTS):
                inner += int((logits > high).sum())
                outer += int((logits > low).sum())
                rows = torch.nonzero(logits.amax(dim=1) > mask_threshold).flatten()
                if rows.numel():
                    cols = torch.nonzero(logits.amax(dim=0) > mask_threshold).flatten()
                    box[0] = min(box[0], col0 + int(cols[0]))
                    box[1] = min(box[1], start + int(rows[0]))
                    box[2] = max(box[2], col0 + int(cols[-1]))
                    box[3] = max(box[3], start + int(rows[-1]))
        counts = torch.tensor([inner, outer], dtype=torch.int32)
        box = box if box[2] >= 0 else [0, 0, 0, 0]  # masks_to_boxes' box of an empty mask
        return counts[0] / counts[1], torch.tensor(box, dtype=torch.long)

    def _masks_per_chunk(self, chunk_bytes: int) -> int:
        """Candidates upscaled at once: float32 logits at the model input and image sizes."""
        height, width = self.predictor.original_size
        per_mask = 4 * (height * width + _model_image_size(self.predictor) ** 2)
        return max(1, chunk_bytes // per_mask)

    def _to_input_frame(self, points: np.ndarray, original_size: tuple[int, int]) -> torch.Tensor:
        predictor = self.predictor
        transformed = predictor.apply_coords(points, original_size)
        device = getattr(predictor, "device", None) or predictor.model.device
        # float32 (MPS has no float64); a predictor may ask for another dtype (None: keep it).
        dtype = getattr(predictor, "coords_dtype", torch.float32)
        return torch.as_tensor(transformed, dtype=dtype, device=device)

    def _decode(
        self, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Low-res logits (B, M, L, L) and IoU (B, M); or full-res logits when only
        ``predict_torch`` is available (then low-res is None)."""
        predictor = self.predictor
        model = predictor.model
        if hasattr(model, "decode"):
            return (
                *model.decode(
                    predictor.get_image_embedding(), coords, labels, multimask_output=True
                ),
                None,
            )
        full_res, iou, _ = predictor.predict_torch(
            coords, labels, multimask_output=True, return_logits=True
        )
        return None, iou, full_res

    def _upscale(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(K, L, L) low-res logits -> (K, H, W) logits at the original size, exactly as the
        predictor upscales them (``SamPredictor.postprocess_masks``)."""
        return self.predictor.postprocess_masks(low_res[:, None])[:, 0]


def _mask_threshold(predictor: Any) -> float:
    return float(getattr(predictor.model, "mask_threshold", 0.0))


def _model_image_size(predictor: Any) -> int:
    model = predictor.model
    size = getattr(model, "image_size", None)
    if size is None:
        size = getattr(getattr(model, "image_encoder", None), "img_size", None)
    if size is None:
        size = max(predictor.input_size)
    return int(size)


def _as_predictor(model: Any) -> Any:
    if hasattr(model, "set_image") and hasattr(model, "predict_torch"):
        return model
    from napari_segany.sam.predictor import SamPredictor

    return SamPredictor(model)
