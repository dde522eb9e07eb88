"""SegGPT input embeddings: patches, segment / type / mask tokens, interpolated absolute positions.

The encoder sees two *streams* of stacked images, each ``2h x w`` (prompt half on top, target
half below): the image stream (prompt image over target image) and the mask stream (prompt mask
over the hidden target mask, replaced by the learned mask token). Each stream gets its segment
token, both get the absolute position embedding and the type token (semantic or instance).
Because patches never straddle the two halves, the halves are embedded separately here, which
lets the predictor embed the prompts once and only the targets per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fused_linear import patch_embedding
from .config import SegGptArchitecture

EMBEDDING_TYPES = ("instance", "semantic")


class SegGptPatchEmbeddings(nn.Module):
    """Non-overlapping ``patch x patch`` convolution, channels-last output."""

    def __init__(self, *, patch_size: int, num_channels: int = 3, hidden_size: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            num_channels, hidden_size, kernel_size=patch_size, stride=patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, H / patch, W / patch, C) patch embeddings."""
        return patch_embedding(self.projection, pixels)


class SegGptEmbeddings(nn.Module):
    """Patch embedding plus the learned tokens and the absolute position embedding.

    Parameter names follow transformers' ``SegGptEmbeddings`` (see the loader for the original
    Painter names).
    """

    def __init__(self, arch: SegGptArchitecture) -> None:
        super().__init__()
        hidden = arch.hidden_size
        self.arch = arch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, hidden))
        self.segment_token_input = nn.Parameter(torch.zeros(1, 1, 1, hidden))
        self.segment_token_prompt = nn.Parameter(torch.zeros(1, 1, 1, hidden))
        self.type_token_semantic = nn.Parameter(torch.zeros(1, 1, 1, hidden))
        self.type_token_instance = nn.Parameter(torch.zeros(1, 1, 1, hidden))
        self.patch_embeddings = SegGptPatchEmbeddings(
            patch_size=arch.patch_size, hidden_size=hidden
        )
        num_positions = (
            arch.pretrain_image_size // arch.patch_size
        ) ** 2 + 1  # + unused class token
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, hidden))

    def position_grid(self) -> torch.Tensor:
        """(1, rows, cols, C) absolute position embedding of the stacked input's patch grid.

        The pretraining grid (square, class token dropped) is resized bicubically
        (``align_corners=False``) when its size differs, as in ViTDet / SegGPT.
        """
        rows, cols = self.arch.grid_size
        table = self.position_embeddings[:, 1:]
        side = round(table.shape[1] ** 0.5)
        table = table.reshape(1, side, side, -1)
        if (side, side) == (rows, cols):
            return table
        resized = F.interpolate(
            table.permute(0, 3, 1, 2).float(),
            size=(rows, cols),
            mode="bicubic",
            align_corners=False,
        )
        return resized.permute(0, 2, 3, 1).to(table.dtype)

    def type_token(self, embedding_type: str) -> torch.Tensor:
        """(1, 1, 1, C) token for ``"instance"`` or ``"semantic"`` prompts."""
        if embedding_type == "instance":
            return self.type_token_instance
        if embedding_type == "semantic":
            return self.type_token_semantic
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")

    def embed_image_half(
        self, pixels: torch.Tensor, *, top: bool, embedding_type: str
    ) -> torch.Tensor:
        """Tokens of one half of the image stream.

        Parameters
        ----------
        pixels
            (B, 3, h, w) normalised images, ``h x w`` being one half of the stacked input.
        top
            True for the prompt (upper) half, False for the target (lower) half.
        embedding_type
            ``"instance"`` or ``"semantic"``.

        Returns
        -------
        torch.Tensor
            (B, rows / 2, cols, C).
        """
        tokens = self.patch_embeddings(pixels) + self.segment_token_input
        return tokens + self._half_positions(top) + self.type_token(embedding_type)

    def embed_mask_stream(self, masks: torch.Tensor, *, embedding_type: str) -> torch.Tensor:
        """Tokens of the mask stream: the prompt's colour mask over the masked-out target half.

        Parameters
        ----------
        masks
            (N, 3, h, w) normalised colour masks of the prompts.

        Returns
        -------
        torch.Tensor
            (N, rows, cols, C).
        """
        prompt = self.patch_embeddings(masks)
        hidden = self.mask_token.expand(prompt.shape[0], *prompt.shape[1:3], -1)
        tokens = torch.cat((prompt, hidden), dim=1) + self.segment_token_prompt
        return tokens + self.position_grid() + self.type_token(embedding_type)

    def _half_positions(self, top: bool) -> torch.Tensor:
        grid = self.position_grid()
        rows = grid.shape[1] // 2
        return grid[:, :rows] if top else grid[:, rows:]
