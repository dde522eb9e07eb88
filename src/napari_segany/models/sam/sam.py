"""The composite Segment Anything model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Segment Anything, assembled from its three parts.

    The expensive image encoder runs once per image (:meth:`embed_image`); the prompt encoder and
    mask decoder run once per prompt (:meth:`decode`). Image preprocessing (resizing, padding,
    normalisation) and mask post-processing live in :class:`napari_segany.sam.SamPredictor`.

    Parameters
    ----------
    image_encoder, prompt_encoder, mask_decoder
        The three parts.
    name
        Human-readable identity, e.g. the registry name or the checkpoint path.
    preprocessing
        The :class:`napari_segany.sam.registry.SamPreprocessing` the weights were trained with;
        set by the loader and read by the predictor (None means SAM's own).
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        *,
        name: str = "sam",
        preprocessing: Any = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.preprocessing = preprocessing

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels (1024 for the released models)."""
        return self.image_encoder.image_size

    @property
    def low_res_mask_size(self) -> tuple[int, int]:
        """(height, width) of the low-resolution mask logits and of ``mask_input``."""
        return self.prompt_encoder.mask_input_size

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    def embed_image(
        self, pixels: torch.Tensor, *, on_block: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded image -> (B, C, S / patch, S / patch) image embedding.

        ``on_block(done, total)`` is called after each encoder block; raising from it cancels
        (see :meth:`ImageEncoderViT.forward`).
        """
        return self.image_encoder(pixels.to(self.dtype), on_block=on_block)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> low-resolution mask logits and IoU predictions, for B prompts on one image.

        Parameters
        ----------
        image_embeddings
            (1 or B, C, h, w) from :meth:`embed_image`.
        point_coords, point_labels
            (B, N, 2) (x, y) model-input-frame pixels and (B, N) labels (1 foreground,
            0 background, -1 ignored), or None.
        boxes
            (B, 4) x0, y0, x1, y1 in model-input-frame pixels, or None.
        mask_input
            (B, 1, 4h, 4w) mask logits from an earlier prediction, or None.
        multimask_output
            Three ambiguity-aware masks per prompt instead of one.

        Returns
        -------
        low_res_logits
            (B, M, 4h, 4w) in the model dtype; M = 3 with ``multimask_output`` else 1.
        iou_predictions
            (B, M).
        """
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        compiled = self.__dict__.get("_compiled_mask_decoder")
        decoder = compiled if compiled is not None else self.mask_decoder
        projections = None
        if compiled is None and mask_input is None:
            projections = self._image_projections(image_embeddings)
        low_res, iou = decoder(
            image_embeddings=image_embeddings.to(self.dtype),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            projections=projections,
        )
        if compiled is not None:  # CUDA graphs reuse their output buffers on the next call
            return low_res.clone(), iou.clone()
        return low_res, iou

    def _image_projections(self, image_embeddings: torch.Tensor):
        """The decoder's prompt-independent image side for ``image_embeddings`` (batch 1, no mask
        input), computed on the first prompt and reused while the embedding tensor and the
        weights it depends on are unchanged; ``None`` when gradients are on (training) or for a
        batch of images."""
        if image_embeddings.shape[0] != 1 or torch.is_grad_enabled():
            return None
        key = (_tensor_key(image_embeddings), *map(_tensor_key, self._projection_inputs()))
        cached = self.__dict__.get("_cached_projections")
        if cached is not None and cached[0] == key and cached[1]() is image_embeddings:
            return cached[2]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        projections = self.mask_decoder.project_image(
            image_embeddings.to(self.dtype), self.prompt_encoder.get_dense_pe(), dense
        )
        self.__dict__["_cached_projections"] = (key, weakref.ref(image_embeddings), projections)
        return projections

    def _projection_inputs(self) -> list[torch.Tensor]:
        """The parameters and buffers :meth:`MaskDecoder.project_image` reads."""
        first = self.mask_decoder.transformer.layers[0]
        to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return [
            self.prompt_encoder.no_mask_embed.weight,
            self.prompt_encoder.get_dense_pe(),
            to_image.k_proj.weight,
            to_image.v_proj.weight,
            to_image.v_proj.bias,
            to_tokens.q_proj.weight,
            to_tokens.q_proj.bias,
        ]

    def compile_decoder(self, *, mode: str | None = "reduce-overhead") -> None:
        """Opt in to ``torch.compile`` of the mask decoder (with CUDA graphs on a GPU).

        The decoder runs once per prompt and is small, so on a GPU its time is mostly kernel
        launches, which CUDA graphs (``mode="reduce-overhead"``) remove. Each new prompt shape
        (number of points, box or not, multimask or not) compiles once (seconds). Not useful on
        the CPU. ``mode=None`` compiles with the default mode. The parameters are shared, and
        the state dict does not change; :meth:`uncompile_decoder` goes back to eager.
        """
        self.__dict__["_compiled_mask_decoder"] = torch.compile(
            self.mask_decoder, mode=mode, dynamic=False
        )

    def uncompile_decoder(self) -> None:
        """Undo :meth:`compile_decoder`."""
        self.__dict__.pop("_compiled_mask_decoder", None)


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """Identity of a tensor's storage and contents for a cache: address, shape, dtype, device and
    in-place version (inference tensors keep no version: they cannot be changed outside
    inference mode, and nothing here changes them inside it)."""
    try:
        version = tensor._version
    except RuntimeError:
        version = None
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device, version)
