"""SamPredictor: the official segment_anything predictor contract on this package's model.

``set_image`` runs the expensive image encoder once; ``predict`` turns prompts into masks cheaply.
Public methods take and return numpy arrays in original-image pixels, (x, y) order; the torch twin
``predict_torch`` takes batched prompts already in the model input frame, like the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam import transforms
from napari_segany.sam.registry import SamPreprocessing

__all__ = ["SamEmbedding", "SamPredictor", "model_identity"]


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


def model_identity(model: torch.nn.Module) -> str:
    """A string naming a model's weights, architecture and dtype, stable across sessions."""
    probes = [
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
        model.mask_decoder.iou_token.weight,
        model.image_encoder.patch_embed.proj.bias,
    ]
    checksum = ",".join(f"{float(p.detach().double().sum()):.6e}" for p in probes if p is not None)
    embedding = model.prompt_encoder.image_embedding_size
    return f"{model.name}|{model.dtype}|{model.image_size}|{embedding}|{checksum}"


class SamPredictor:
    """Predict masks from points, boxes and masks on an image, with a SAM model.

    Parameters
    ----------
    model
        A :class:`napari_segany.models.sam.Sam`, e.g. from :func:`napari_segany.sam.load_sam`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
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
        self, image: np.ndarray, contrast_limits: tuple[float, float] | None = None
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
        """
        rgb = to_uint8_rgb(image, contrast_limits)
        size = self.model.image_size
        if self.preprocessing.resize == "square":
            resized = transforms.resize_square_bicubic(rgb, size)
        else:
            resized = transforms.resize_longest_side(rgb, size)
        if not resized.flags.writeable:  # PIL hands out read-only arrays
            resized = resized.copy()
        pixels = (
            torch.from_numpy(np.ascontiguousarray(resized)).to(self.device).permute(2, 0, 1)[None]
        )
        self.set_torch_image(pixels, rgb.shape[:2])

    @torch.inference_mode()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]
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
        features = self.model.embed_image(pixels)
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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Parameters
        ----------
        point_coords
            (N, 2) points, (x, y) in original-image pixels. With ``box`` of shape (B, 4) also
            (B, N, 2): points per box.
        point_labels
            (N,) (or (B, N)) labels: 1 foreground, 0 background.
        box
            (4,) x0, y0, x1, y1 in original-image pixels, corners in any order; or (B, 4) for B
            objects decoded in one call (then every output gains a leading B axis).
        mask_input
            (1, L, L) low-resolution logits from an earlier prediction (L = 256 for SAM); with
            B boxes also (B, 1, L, L).
        multimask_output
            Three ambiguity-aware masks (C = 3) instead of one (C = 1).
        return_logits
            Return float32 logits instead of boolean masks.

        Returns
        -------
        masks
            (C, H, W) bool (float32 logits with ``return_logits``), original image size.
        scores
            (C,) float32 predicted IoU of each mask.
        low_res_logits
            (C, L, L) float32, usable as ``mask_input`` of a later call.

        Raises
        ------
        RuntimeError
            No image set.
        ValueError
            Prompts of the wrong shape, labels not matching points, no usable mask input size.
        """
        self._require_image()
        batched = box is not None and np.ndim(box) == 2
        boxes = self._validate_boxes(box)
        batch = 1 if boxes is None else boxes.shape[0]
        coords, labels = self._validate_points(point_coords, point_labels, batch)
        masks_in = self._validate_mask_input(mask_input, batch)

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
        masks, scores, low_res = self.predict_torch(
            coords_t, labels_t, boxes_t, masks_t, multimask_output, return_logits=return_logits
        )
        masks_np, scores_np, low_res_np = (
            masks.cpu().numpy(),
            scores.cpu().numpy(),
            low_res.cpu().numpy(),
        )
        if batched:
            return masks_np, scores_np, low_res_np
        return masks_np[0], scores_np[0], low_res_np[0]

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
        low_res, iou = self.model.decode(
            self.features,
            point_coords=point_coords,
            point_labels=point_labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask_output=multimask_output,
        )
        low_res = low_res.float()
        masks = self.postprocess_masks(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou.float(), low_res

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

    # -- validation --------------------------------------------------------------------------

    @staticmethod
    def _validate_boxes(box: np.ndarray | None) -> np.ndarray | None:
        if box is None:
            return None
        boxes = np.asarray(box, dtype=np.float64)
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
            raise ValueError(
                f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1; got {np.shape(box)}"
            )
        if not np.all(np.isfinite(boxes)):
            raise ValueError("box coordinates must be finite")
        x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
        y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
        return np.stack([x0, y0, x1, y1], axis=1)

    @staticmethod
    def _validate_points(
        point_coords: np.ndarray | None, point_labels: np.ndarray | None, batch: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if point_coords is None:
            if point_labels is not None:
                raise ValueError("point_labels given without point_coords")
            return None, None
        if point_labels is None:
            raise ValueError(
                "point_labels must be supplied with point_coords (1 foreground, 0 background)"
            )
        coords = np.asarray(point_coords, dtype=np.float64)
        labels = np.asarray(point_labels)
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
            raise ValueError(
                f"point_coords must have shape (N, 2) as (x, y); got {np.shape(point_coords)}"
            )
        if labels.ndim == 1:
            labels = labels[None]
        if labels.shape != coords.shape[:2]:
            raise ValueError(
                f"point_labels {np.shape(point_labels)} must give one label per point "
                f"(point_coords {np.shape(point_coords)})"
            )
        if not np.all(np.isfinite(coords)):
            raise ValueError("point coordinates must be finite")
        if not np.all(np.isin(labels, (0, 1, -1))):
            raise ValueError(
                f"point labels must be 1 (foreground) or 0 (background); got {np.unique(labels)}"
            )
        if coords.shape[0] not in (1, batch):
            raise ValueError(f"{coords.shape[0]} point sets for {batch} boxes")
        if coords.shape[0] != batch:
            coords = np.repeat(coords, batch, axis=0)
            labels = np.repeat(labels, batch, axis=0)
        return coords, labels.astype(np.int64)

    def _validate_mask_input(self, mask_input: np.ndarray | None, batch: int) -> np.ndarray | None:
        if mask_input is None:
            return None
        masks = np.asarray(mask_input, dtype=np.float32)
        size = tuple(self.model.low_res_mask_size)
        if masks.ndim == 3:
            masks = masks[None]
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != size:
            raise ValueError(
                f"mask_input must have shape (1, {size[0]}, {size[1]}) (or (B, 1, {size[0]}, {size[1]})); "
                f"got {np.shape(mask_input)}"
            )
        if masks.shape[0] not in (1, batch):
            raise ValueError(f"{masks.shape[0]} mask inputs for {batch} boxes")
        if masks.shape[0] != batch:
            masks = np.repeat(masks, batch, axis=0)
        return masks
