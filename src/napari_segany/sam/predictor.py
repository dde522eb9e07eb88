"""SamPredictor: the official segment_anything predictor contract on this package's model.

``set_image`` runs the expensive image encoder once; ``predict`` turns prompts into masks cheaply.
Public methods take and return numpy arrays in original-image pixels, (x, y) order; the torch twin
``predict_torch`` takes batched prompts already in the model input frame, like the original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_segany.errors import explain_out_of_memory
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam import transforms
from napari_segany.sam.mask_upscaling import (
    block_bands,
    block_window,
    input_frame_block,
    upscale_into,
)
from napari_segany.sam.prompt_validation import (
    MAX_POINTS_PER_OBJECT,
    check_resizable,
    validate_boxes,
    validate_mask_input,
    validate_points,
)
from napari_segany.sam.registry import SamPreprocessing

__all__ = ["MAX_POINTS_PER_OBJECT", "SamEmbedding", "SamPredictor", "model_identity"]


@dataclass(frozen=True)
class SamEmbedding:
    """The image embedding of one image, with what is needed to decode prompts on it.

    Attributes
    ----------
    features
        (1, C, h, w) image embedding in the model dtype.
    original_size
        (height, width) of the image given to ``set_image``.
    input_size
        (height, width) of the resized image inside the square model input.
    model_id
        :func:`model_identity` of the model that computed it.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str


BOXES_PER_DECODE = 64
"""Boxes decoded in one batch of the mask decoder (more are decoded in several batches)."""


def model_identity(model: torch.nn.Module) -> str:
    """A string naming a model's weights, architecture, preprocessing and dtype, stable across sessions.

    ``name|dtype|input size|embedding grid|checksum``: the checksum hashes every tensor's name,
    shape and dtype and a sample of its values (64 evenly spaced elements and the last one), so
    other weights at the same path or another precision give another identity. Cheap (a few
    milliseconds for ViT-H), computed once per predictor.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(getattr(model, "preprocessing", None)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0 or flat.device.type == "meta":
            continue
        step = max(1, flat.numel() // 64)
        sample = torch.cat([flat[::step][:64], flat[-1:]]).cpu().contiguous()
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    dtype = str(model.dtype).removeprefix("torch.")
    embedding = model.prompt_encoder.image_embedding_size
    grid = "x".join(str(int(s)) for s in embedding)
    return f"{model.name}|{dtype}|{model.image_size}|{grid}|{digest.hexdigest()}"


class SamPredictor:
    """Predict masks from points, boxes and masks on an image, with a SAM model.

    Parameters
    ----------
    model
        A :class:`napari_segany.models.sam.Sam`, e.g. from :func:`napari_segany.sam.load_sam`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        if model is None or not hasattr(model, "image_encoder"):
            raise ValueError(
                f"SamPredictor needs a loaded SAM model (napari_segany.sam.load_sam('sam-vit-b')), "
                f"got {type(model).__name__}"
            )
        self.model = model
        self.preprocessing: SamPreprocessing = (
            getattr(model, "preprocessing", None) or SamPreprocessing()
        )
        self._model_id = model_identity(model)
        self.reset_image()

    # -- state -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def model_id(self) -> str:
        """:func:`model_identity` of the model (weights checksum, dtype, input size)."""
        return self._model_id

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.is_image_set = False

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, C, h, w) embedding of the current image (C = 256, h = w = 64 for SAM)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to get its embedding.")
        return self.features

    def get_embedding_state(self) -> SamEmbedding:
        """Everything needed to decode prompts on the current image, to cache and set back later."""
        self._require_image()
        return SamEmbedding(self.features, self.original_size, self.input_size, self._model_id)

    def set_embedding_state(self, state: SamEmbedding) -> None:
        """Use an embedding from :meth:`get_embedding_state` instead of running the image encoder.

        Raises
        ------
        ValueError
            The state was computed by another model (weights, dtype or input size differ).
        """
        if state.model_id != self._model_id:
            raise ValueError(
                f"embedding state comes from another model ({state.model_id!r}), "
                f"this predictor's model is {self._model_id!r}"
            )
        features = state.features.to(device=self.device, dtype=self.model.dtype)
        self.reset_image()
        self.features = features
        self.original_size = tuple(int(s) for s in state.original_size)
        self.input_size = tuple(int(s) for s in state.input_size)
        self.is_image_set = True

    # -- image -------------------------------------------------------------------------------

    def set_image(
        self,
        image: np.ndarray,
        contrast_limits: tuple[float, float] | None = None,
        *,
        on_block: Callable[[int, int], None] | None = None,
    ) -> None:
        """Compute the embedding of an image, for later :meth:`predict` calls.

        Parameters
        ----------
        image
            (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped), any
            numeric dtype; non-uint8 images are scaled to 0-255 by ``contrast_limits`` or robust
            percentiles (:func:`napari_segany.image_conversion.to_uint8_rgb`).
        contrast_limits
            (low, high) intensities mapped to 0 and 255.
        on_block
            ``on_block(done, total)`` after each image-encoder block; raising from it abandons
            the embedding (how *Cancel* acts within one block).
        """
        rgb = to_uint8_rgb(image, contrast_limits)
        size = self.model.image_size
        check_resizable(rgb.shape[:2], size, self.preprocessing.resize)
        if self.preprocessing.resize == "square":
            resized = transforms.resize_square_bicubic(rgb, size)
        else:
            resized = transforms.resize_longest_side(rgb, size)
        if not resized.flags.writeable:  # PIL hands out read-only arrays
            resized = resized.copy()
        pixels = (
            torch.from_numpy(np.ascontiguousarray(resized)).to(self.device).permute(2, 0, 1)[None]
        )
        self.set_torch_image(pixels, rgb.shape[:2], on_block=on_block)

    @torch.inference_mode()
    def set_torch_image(
        self,
        transformed_image: torch.Tensor,
        original_image_size: tuple[int, int],
        *,
        on_block: Callable[[int, int], None] | None = None,
    ) -> None:
        """Compute the embedding of an already resized (1, 3, h, w) 0-255 image (h or w = image_size)."""
        size = self.model.image_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[:2] != (1, 3)
            or max(transformed_image.shape[2:]) != size
        ):
            raise ValueError(
                f"set_torch_image expects a (1, 3, h, w) image with longest side {size}, "
                f"got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        input_size = (int(transformed_image.shape[2]), int(transformed_image.shape[3]))
        pixels = self._normalize(transformed_image.to(self.device, torch.float32))
        pixels = F.pad(pixels, (0, size - input_size[1], 0, size - input_size[0]))
        with explain_out_of_memory("computing the image embedding", "use a smaller model"):
            features = self.model.embed_image(pixels, on_block=on_block)
        self.features = features
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = input_size
        self.is_image_set = True

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.preprocessing.normalization == "min_max":
            low, high = pixels.amin(), pixels.amax()
            return (pixels - low) / torch.clamp(high - low, min=1e-8)
        mean = torch.tensor(self.preprocessing.pixel_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.pixel_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    # -- prompts -----------------------------------------------------------------------------

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) (x, y) pixels of an ``original_size`` image -> model input frame."""
        return transforms.apply_coords(coords, original_size, self._input_size_for(original_size))

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) x0, y0, x1, y1 boxes of an ``original_size`` image -> model input frame."""
        return transforms.apply_boxes(boxes, original_size, self._input_size_for(original_size))

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Torch twin of :meth:`apply_coords`."""
        return transforms.apply_coords_torch(
            coords, original_size, self._input_size_for(original_size)
        )

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Torch twin of :meth:`apply_boxes`."""
        return transforms.apply_boxes_torch(
            boxes, original_size, self._input_size_for(original_size)
        )

    def _input_size_for(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return transforms.model_input_size(
            tuple(original_size), self.model.image_size, self.preprocessing.resize
        )

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        return_low_res_only: bool = False,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Parameters
        ----------
        point_coords
            (N, 2) points, (x, y) in original-image pixels. With ``box`` of shape (B, 4) also
            (B, N, 2): points per box. At most :data:`MAX_POINTS_PER_OBJECT` per object.
        point_labels
            (N,) (or (B, N)) labels: 1 foreground, 0 background.
        box
            (4,) x0, y0, x1, y1 in original-image pixels, corners in any order; or (B, 4) for B
            objects decoded in one call (then every output gains a leading B axis).
        mask_input
            (1, L, L) low-resolution logits from an earlier prediction (L = 256 for SAM); with
            B boxes also (B, 1, L, L). Must be finite.
        multimask_output
            Three ambiguity-aware masks (C = 3) instead of one (C = 1).
        return_logits
            Return float32 logits instead of boolean masks.
        return_low_res_only
            Skip the full-size masks (``masks`` is ``None``): cheap on huge images; upscale the
            candidate you need with :meth:`upscale_mask`.

        Returns
        -------
        masks
            (C, H, W) bool (float32 logits with ``return_logits``), original image size.
        scores
            (C,) float32 predicted IoU of each mask.
        low_res_logits
            (C, L, L) float32, usable as ``mask_input`` of a later call.

        Notes
        -----
        Memory: boolean masks are upscaled one at a time and only inside the window their
        positive logits can reach, so beyond the returned (B, C, H, W) booleans only a few tens
        of MB are used (8 boxes on a 12000² image, one mask each: 1.15 GB of masks).

        Raises
        ------
        RuntimeError
            No image set.
        ValueError
            Prompts of the wrong shape, labels not matching points, NaN or infinite values, too
            many points, no usable mask input size.
        napari_segany.errors.OutOfMemoryError
            The masks do not fit in memory (fewer boxes, one mask per box, or
            ``return_low_res_only``).
        """
        self._require_image()
        batched = box is not None and np.ndim(box) == 2
        boxes = validate_boxes(box)
        batch = 1 if boxes is None else boxes.shape[0]
        coords, labels = validate_points(point_coords, point_labels, batch)
        masks_in = validate_mask_input(mask_input, batch, self.model.low_res_mask_size)

        device = self.device
        coords_t = labels_t = boxes_t = masks_t = None
        if coords is not None:
            coords_t = torch.as_tensor(
                self.apply_coords(coords, self.original_size), dtype=torch.float32, device=device
            )
            labels_t = torch.as_tensor(labels, dtype=torch.int64, device=device)
        if boxes is not None:
            boxes_t = torch.as_tensor(
                self.apply_boxes(boxes, self.original_size), dtype=torch.float32, device=device
            )
        if masks_in is not None:
            masks_t = torch.as_tensor(masks_in, dtype=torch.float32, device=device)
        scores_parts, low_res_parts = [], []
        for start in range(0, batch, BOXES_PER_DECODE):
            part = slice(start, start + BOXES_PER_DECODE)
            low_res, iou = self._decode(
                coords_t[part] if coords_t is not None else None,
                labels_t[part] if labels_t is not None else None,
                boxes_t[part] if boxes_t is not None else None,
                masks_t[part] if masks_t is not None else None,
                multimask_output,
            )
            scores_parts.append(iou.cpu())
            low_res_parts.append(low_res.cpu())
        scores = torch.cat(scores_parts).numpy()
        low_res = torch.cat(low_res_parts)
        masks = None
        if not return_low_res_only:
            with explain_out_of_memory(
                f"upscaling {low_res.shape[0] * low_res.shape[1]} masks to "
                f"{self.original_size[0]} x {self.original_size[1]} pixels",
                "use fewer boxes at once, one mask per box (multimask_output=False) or "
                "return_low_res_only=True with upscale_mask()",
            ):
                masks = self._upscale_all(low_res, return_logits, torch.device("cpu")).numpy()
        low_res_np = low_res.numpy()
        if batched:
            return masks, scores, low_res_np
        return (None if masks is None else masks[0]), scores[0], low_res_np[0]

    def upscale_mask(
        self,
        low_res_logits: np.ndarray,
        index: int | tuple[int, ...] = 0,
        *,
        return_logits: bool = False,
        crop: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, tuple[int, int]]:
        """One candidate of :meth:`predict`'s ``low_res_logits`` at the original image size.

        Parameters
        ----------
        low_res_logits
            (L, L), (C, L, L) or (B, C, L, L) float logits from :meth:`predict` on this image.
        index
            Which map: an int over the first axis, or ``(b, c)`` for (B, C, L, L).
        return_logits
            Float32 logits instead of a boolean mask.
        crop
            Return ``(window, (row0, col0))``: only the smallest window that can hold the
            boolean mask, and its top-left corner in the image (an empty (0, 0) window when the
            mask is empty). Writing a huge image's labels through this window keeps memory low.

        Returns
        -------
        np.ndarray or tuple
            (H, W) bool mask (float32 with ``return_logits``), or the window and its corner.
        """
        self._require_image()
        maps = torch.as_tensor(np.asarray(low_res_logits, dtype=np.float32))
        selected = maps[index] if maps.ndim > 2 else maps
        size = tuple(self.model.low_res_mask_size)
        if tuple(selected.shape) != size:
            raise ValueError(
                f"index {index!r} of low-resolution logits {tuple(maps.shape)} does not select one "
                f"{size[0]} x {size[1]} map"
            )
        if not bool(torch.isfinite(selected.abs().amax())):  # NaN propagates through the max
            raise ValueError("low-resolution logits must be finite (no NaN or infinity)")
        selected = selected.to(self.device)
        height, width = self.original_size
        threshold = self.model.mask_threshold
        if not crop:
            if return_logits:
                full = torch.empty(height, width, dtype=torch.float32)
                upscale_into(self._input_frame_logits(selected[None])[0], full)
                return full.numpy()
            full = _zeros_bool((height, width))
            self._upscale_one(selected, full)
            return full.numpy()
        empty = np.zeros((0, 0), dtype=np.float32 if return_logits else bool), (0, 0)
        block = self._frame_block(selected)
        if block is None:
            return empty
        values, (row0, col0), frame_shape = block
        if frame_shape == (height, width):  # no second resize: the frame's window itself
            part = values.float().cpu()
            return (part if return_logits else part > threshold).numpy(), (row0, col0)
        window = block_window(block, (height, width), threshold)
        if window is None:
            return empty
        row0, row1, col0, col1 = window
        out = torch.empty(row1 - row0, col1 - col0, dtype=torch.float32)
        for start, logits in block_bands(block, (height, width), window):
            out[start - row0 : start - row0 + len(logits)] = logits.cpu()
        return (out if return_logits else out > threshold).numpy(), (row0, col0)

    def _decode(self, coords, labels, boxes, masks, multimask_output):
        with torch.inference_mode():
            low_res, iou = self.model.decode(
                self.features,
                point_coords=coords,
                point_labels=labels,
                boxes=boxes,
                mask_input=masks,
                multimask_output=multimask_output,
            )
        return low_res.float(), iou.float()

    @torch.inference_mode()
    def _upscale_all(
        self, low_res: torch.Tensor, return_logits: bool, device: torch.device
    ) -> torch.Tensor:
        """(B, C, L, L) logits -> (B, C, H, W) bool masks (or float logits), one map at a time."""
        batch, channels = low_res.shape[:2]
        height, width = self.original_size
        if return_logits:
            out = torch.empty(batch, channels, height, width, dtype=torch.float32, device=device)
            for b in range(batch):
                frames = self._input_frame_logits(low_res[b].to(self.device))
                for c in range(channels):
                    upscale_into(frames[c], out[b, c])
            return out
        out = _zeros_bool((batch, channels, height, width), device)
        for b in range(batch):
            for c in range(channels):
                self._upscale_one(low_res[b, c].to(self.device), out[b, c])
        return out

    def _upscale_one(self, low_res: torch.Tensor, out: torch.Tensor) -> None:
        """Write the (L, L) logits' mask into the all-False (H, W) bool ``out``, computing only
        the window where it can be True."""
        block = self._frame_block(low_res)
        if block is None:
            return
        values, origin, frame_shape = block
        threshold = self.model.mask_threshold
        upscale_into(values, out, threshold=threshold, origin=origin, source_shape=frame_shape)

    def _frame_block(
        self, low_res: torch.Tensor, threshold: float | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]] | None:
        """The part of :meth:`_input_frame_logits` of one (L, L) map that can exceed
        ``threshold`` (default: the mask threshold), plus the pixel around it that a resize to the
        original size reads: (values, top-left corner, frame shape); ``None`` if no pixel can."""
        low_res = low_res.float()
        if self.preprocessing.resize == "square":  # the low-res map is the frame
            return low_res, (0, 0), tuple(low_res.shape)
        size = self.model.image_size
        margin = 0 if tuple(self.input_size) == tuple(self.original_size) else 1
        if threshold is None:
            threshold = self.model.mask_threshold
        block = input_frame_block(low_res, (size, size), self.input_size, threshold, margin=margin)
        if block is None:
            return None
        return block[0], block[1], tuple(self.input_size)

    def _input_frame_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """(N, L, L) logits -> (N, h, w) on the resized image inside the model input (SAM), or
        unchanged (MedSAM's square resize goes straight to the original size)."""
        if self.preprocessing.resize == "square":
            return low_res.float()
        size = self.model.image_size
        frames = transforms.resize_bilinear(low_res.float(), (size, size))
        return frames[:, : self.input_size[0], : self.input_size[1]]

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the model input frame (see ``apply_*_torch``).

        Parameters
        ----------
        point_coords
            (B, N, 2) (x, y) points, or None.
        point_labels
            (B, N) labels (1 foreground, 0 background, -1 ignored), or None.
        boxes
            (B, 4) x0, y0, x1, y1 boxes, or None.
        mask_input
            (B, 1, L, L) low-resolution logits, or None.
        multimask_output, return_logits
            As in :meth:`predict`.

        Returns
        -------
        masks
            (B, C, H, W) bool (float32 logits with ``return_logits``) at the original image size.
        iou_predictions
            (B, C) float32.
        low_res_logits
            (B, C, L, L) float32.
        """
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels are required with point_coords")
        low_res, iou = self._decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self._upscale_all(low_res, return_logits, low_res.device)
        return masks, iou, low_res

    def postprocess_masks(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(B, C, L, L) low-resolution logits -> (B, C, H, W) logits at the original image size.

        SAM: upscaled to the model input, padding cut, then resized to the original size (as the
        original ``Sam.postprocess_masks``). MedSAM (square resize): resized directly.
        """
        self._require_image()
        size = self.model.image_size
        batch, channels = low_res_logits.shape[:2]
        # (B * C, L, L): resizing many single-channel maps is several times faster than (B, C, L, L).
        masks = low_res_logits.reshape(batch * channels, *low_res_logits.shape[2:])
        if self.preprocessing.resize != "square":
            masks = transforms.resize_bilinear(masks, (size, size))
            masks = masks[:, : self.input_size[0], : self.input_size[1]]
        if tuple(masks.shape[-2:]) != self.original_size:
            masks = transforms.resize_bilinear(masks, self.original_size)
        return masks.reshape(batch, channels, *masks.shape[-2:])


def _zeros_bool(shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """An all-False bool tensor. On the CPU from ``np.zeros``, whose pages the OS zeroes only
    when touched: a mask written in a small window of a 12000² plane costs that window, where
    ``torch.zeros`` writes all 137 MiB first (32 ms)."""
    if device is None or device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=bool))
    return torch.zeros(shape, dtype=torch.bool, device=device)
