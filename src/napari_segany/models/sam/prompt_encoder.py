"""SAM prompt encoder: points, boxes and low-resolution masks -> sparse and dense prompt embeddings.

Parameter names follow the original segment_anything release (``prompt_encoder.*``).
Positional encodings are computed in float32 whatever the model dtype (point coordinates up to
1024 do not survive bfloat16), then cast to the model dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2D coordinates: (x, y) in [0, 1] -> (sin, cos) of 2 * num_feats."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates normalised to [0, 1], (x, y) order -> (..., 2 * num_feats) float32."""
        coords = (2 * coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float()
        coords = (2 * math.pi) * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of the centre of every cell of a (height, width) grid: (C, height, width) float32."""
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack(torch.broadcast_tensors(x[None, :], y[:, None]), dim=-1)
        return self.encode(coords).permute(2, 0, 1)

    def encode_pixels(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) (x, y) pixel coordinates in an (height, width) frame -> (..., C) float32."""
        scale = torch.tensor([1.0 / image_size[1], 1.0 / image_size[0]], device=coords.device)
        return self.encode(coords.float() * scale)


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for the mask decoder.

    Parameters
    ----------
    embed_dim
        Channels of the prompt embeddings (= image embedding channels, 256 for released models).
    image_embedding_size
        (height, width) of the image embedding grid.
    input_image_size
        (height, width) of the padded model input, the frame of the prompt coordinates.
    mask_in_chans
        Hidden channels of the mask downscaling network.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: top-left box corner, 3: bottom-right corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4, eps=layer_norm_eps),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans, eps=layer_norm_eps),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        # Cached positional encoding of the image embedding grid; recomputed after loading weights.
        self.register_buffer(
            "dense_pe", torch.empty(1, embed_dim, *self.image_embedding_size), persistent=False
        )
        self.register_load_state_dict_post_hook(_reset_buffers_after_load)
        if self.dense_pe.device.type != "meta":
            self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute the cached dense positional encoding from the current weights."""
        with torch.no_grad():
            pe = self.pe_layer.grid(*self.image_embedding_size).to(self.no_mask_embed.weight.dtype)
            # Channels-last memory (the decoder's layout), (1, C, h, w) shape (the original API).
            self.dense_pe = pe.permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, embed_dim, h, w), cached.

        Stored channels last, so the decoder's (h * w, embed_dim) view of it costs no copy.
        """
        return self.dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) (x, y) input-frame points and (B, N) labels -> (B, N (+1), C) embeddings."""
        points = points.float() + 0.5  # centre of the pixel
        if pad:  # a "not a point" token, as in the original, when no box follows the points
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.pe_layer.encode_pixels(points, self.input_image_size)
        embedding = embedding.to(self.no_mask_embed.weight.dtype)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        return embedding + torch.where(labels == 1, self.point_embeddings[1].weight, 0.0)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) x0, y0, x1, y1 input-frame boxes -> (B, 2, C) corner embeddings."""
        corners = boxes.float().reshape(-1, 2, 2) + 0.5
        embedding = self.pe_layer.encode_pixels(corners, self.input_image_size)
        embedding = embedding.to(self.no_mask_embed.weight.dtype)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return embedding + corner_embed

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed any combination of prompts.

        Parameters
        ----------
        points
            (coords (B, N, 2) in (x, y) input-frame pixels, labels (B, N): 1 foreground,
            0 background, -1 ignored) or None.
        boxes
            (B, 4) x0, y0, x1, y1 in input-frame pixels, or None.
        masks
            (B, 1, 4h, 4w) mask logits, or None.

        Returns
        -------
        sparse
            (B, N_tokens, embed_dim) point and box embeddings (N_tokens may be 0).
        dense
            (B, embed_dim, h, w) mask embedding (the learned "no mask" embedding if none given).
        """
        batch = _batch_size(points, boxes, masks)
        dtype = self.no_mask_embed.weight.dtype
        parts = []
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        else:
            sparse = torch.empty(
                (batch, 0, self.embed_dim), dtype=dtype, device=self.dense_pe.device
            )
        if masks is not None:
            dense = self.mask_downscaling(masks.to(dtype))
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, *self.image_embedding_size
            )
        return sparse, dense


def _reset_buffers_after_load(module: PromptEncoder, _incompatible_keys) -> None:
    module.reset_buffers()


def _batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1
