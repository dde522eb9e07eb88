"""The SegGPT composite: embeddings, encoder and decoder, split into a per-prompt and a per-target part.

One forward of the original model runs a batch of stacked inputs (prompt over target) through
two streams. Everything that depends only on the prompts (their embeddings, and the whole mask
stream up to the merge block) is computed once by :meth:`SegGpt.encode_prompts`; each call of
:meth:`SegGpt.forward` then runs only the image stream of the new targets. The painted mask is
decoded only for the target half (plus the one patch row above it that the decoder's 3x3
convolution reads), for the first prompt of each target, which is what the original returns.
With several prompts ensembled, the shared target half is computed once per target (see
``encoder.SplitTokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import SegGptArchitecture
from .decoder import SegGptDecoder
from .embeddings import EMBEDDING_TYPES, SegGptEmbeddings
from .encoder import SegGptEncoder, SplitTokens


@dataclass(frozen=True)
class SegGptPromptState:
    """Prompt-only part of the computation, reused for every target.

    Attributes
    ----------
    prompt_tokens
        (N, rows / 2, cols, C) image-stream tokens of the N prompt images (upper half).
    mask_state
        Mask stream after the merge block: (N, rows / 2, cols, C) prompt rows and the target
        rows, (1, ...) with ensemble, else (N, ...).
    embedding_type
        ``"instance"`` or ``"semantic"``.
    feature_ensemble
        Whether the N prompts are ensembled into one prediction per target.
    """

    prompt_tokens: torch.Tensor
    mask_state: SplitTokens
    embedding_type: str
    feature_ensemble: bool

    @property
    def num_prompts(self) -> int:
        return self.prompt_tokens.shape[0]


class SegGpt(nn.Module):
    """SegGPT in-context segmentation model.

    Parameters
    ----------
    arch
        Hyperparameters.
    embeddings, encoder, decoder
        The parts; built from ``arch`` when omitted (see :meth:`build`).
    """

    def __init__(
        self,
        arch: SegGptArchitecture,
        *,
        embeddings: SegGptEmbeddings | None = None,
        encoder: SegGptEncoder | None = None,
        decoder: SegGptDecoder | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.embeddings = embeddings if embeddings is not None else SegGptEmbeddings(arch)
        self.encoder = encoder if encoder is not None else SegGptEncoder(arch)
        self.decoder = decoder if decoder is not None else SegGptDecoder(arch)

    @classmethod
    def build(cls, arch: SegGptArchitecture) -> SegGpt:
        """A model with uninitialised-by-checkpoint (zero / default) parameters."""
        return cls(arch)

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.position_embeddings.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.position_embeddings.device

    @torch.inference_mode()
    def encode_prompts(
        self,
        prompt_pixels: torch.Tensor,
        prompt_masks: torch.Tensor,
        *,
        embedding_type: str = "instance",
        feature_ensemble: bool = True,
        on_block: Callable[[int, int], None] | None = None,
    ) -> SegGptPromptState:
        """Embed the prompts and run the mask stream up to the merge block.

        Parameters
        ----------
        prompt_pixels, prompt_masks
            (N, 3, h, w) prompt images and their colour masks, ImageNet-normalised, ``h x w``
            being half the stacked input (448 x 448 for the released model).
        embedding_type
            ``"instance"`` or ``"semantic"`` (the type token).
        feature_ensemble
            With N > 1, ensemble the prompts into one prediction per target (original SegGPT
            rule); otherwise every prompt gives its own prediction.
        on_block
            Called as ``on_block(done, total)`` after each mask-stream block; raising from it
            cancels (the exception propagates).
        """
        if embedding_type not in EMBEDDING_TYPES:
            raise ValueError(
                f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}"
            )
        self._check_half(prompt_pixels, "prompt_pixels")
        self._check_half(prompt_masks, "prompt_masks")
        if prompt_pixels.shape[0] != prompt_masks.shape[0] or prompt_pixels.shape[0] == 0:
            raise ValueError(
                f"need as many prompt masks as prompt images (at least one), got "
                f"{prompt_pixels.shape[0]} and {prompt_masks.shape[0]}"
            )
        ensemble = feature_ensemble and prompt_pixels.shape[0] > 1
        prompt_pixels = prompt_pixels.to(self.device, self.dtype)
        prompt_masks = prompt_masks.to(self.device, self.dtype)
        tokens = self.embeddings.embed_image_half(
            prompt_pixels, top=True, embedding_type=embedding_type
        )
        mask_tokens = self.embeddings.embed_mask_stream(prompt_masks, embedding_type=embedding_type)
        mask_state = self.encoder.run_mask_stream(mask_tokens, ensemble=ensemble, on_block=on_block)
        return SegGptPromptState(tokens, mask_state, embedding_type, ensemble)

    @torch.inference_mode()
    def forward(
        self,
        target_pixels: torch.Tensor,
        prompts: SegGptPromptState,
        *,
        on_block: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Paint the mask of each target.

        Parameters
        ----------
        target_pixels
            (T, 3, h, w) ImageNet-normalised target images.
        prompts
            From :meth:`encode_prompts`.
        on_block
            Called as ``on_block(done, total)`` after each encoder block; raising from it
            cancels (the exception propagates).

        Returns
        -------
        torch.Tensor
            (T, 3, h, w) painted colour masks, ImageNet-normalised, in the model's dtype; with
            ``feature_ensemble=False`` and N prompts, (T * N, 3, h, w), the N predictions of each
            target next to each other.
        """
        self._check_half(target_pixels, "target_pixels")
        target_pixels = target_pixels.to(self.device, self.dtype)
        num_targets, num_prompts = target_pixels.shape[0], prompts.num_prompts
        targets = self.embeddings.embed_image_half(
            target_pixels, top=False, embedding_type=prompts.embedding_type
        )
        # Stacked input t * N + n is prompt n over target t; with ensemble the N inputs of a
        # target share one target half.
        prompt = prompts.prompt_tokens.repeat(num_targets, 1, 1, 1)
        if not prompts.feature_ensemble and num_prompts > 1:
            targets = targets.repeat_interleave(num_prompts, dim=0)
        half_rows = targets.shape[1]
        # The decoder's 3x3 conv reads one pixel row of the prompt half above the target.
        keep_from = half_rows - 1
        features = self.encoder(
            SplitTokens(prompt, targets),
            prompts.mask_state,
            keep_rows_from=keep_from,
            on_block=on_block,
        )
        painted = self.decoder(features)
        return painted[:, :, self.arch.patch_size :]

    def _check_half(self, pixels: torch.Tensor, name: str) -> None:
        expected = self.arch.half_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != expected:
            raise ValueError(
                f"{name} must be (B, 3, {expected[0]}, {expected[1]}), got {tuple(pixels.shape)}"
            )
