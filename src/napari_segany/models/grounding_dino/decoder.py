"""Grounding DINO decoder: query self-attention, text cross-attention, deformable image
cross-attention, with iterative box refinement between layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiheadAttention
from .config import GroundingDinoConfig
from .deformable_attention import (
    MultiscaleDeformableAttention,
)
from .position_encoding import coordinate_position_embedding


class MLPHead(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (box regression, query positions)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Post-norm: self-attention → text cross-attention → deformable image attention → MLP."""

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        d = config.d_model
        heads = config.decoder_attention_heads
        self.self_attn = MultiheadAttention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_attn_text = MultiheadAttention(d, heads)
        self.encoder_attn_text_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_attn = MultiscaleDeformableAttention(
            d, heads, config.num_feature_levels, config.decoder_n_points
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)

    def forward(
        self,
        queries: torch.Tensor,
        query_position: torch.Tensor,
        reference_points: torch.Tensor,
        vision: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        text: torch.Tensor,
        text_attend: torch.Tensor,
    ) -> torch.Tensor:
        q = queries + query_position
        queries = self.self_attn_layer_norm(queries + self.self_attn(q, q, queries))
        q = queries + query_position
        attended = self.encoder_attn_text(q, text, text, text_attend)
        queries = self.encoder_attn_text_layer_norm(queries + attended)
        attended = self.encoder_attn(
            queries + query_position, vision, reference_points, spatial_shapes
        )
        queries = self.encoder_attn_layer_norm(queries + attended)
        return self.final_layer_norm(queries + self.fc2(F.relu(self.fc1(queries))))


class GroundingDinoDecoder(nn.Module):
    """Decoder layers; each refines the query boxes with the shared box head.

    ``bbox_embed`` (the detector's box heads) is passed to ``forward``, not owned here.
    """

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, config.layer_norm_eps)
        self.reference_points_head = MLPHead(
            config.query_dim // 2 * config.d_model, config.d_model, config.d_model, 2
        )

    def forward(
        self,
        queries: torch.Tensor,
        reference_points: torch.Tensor,
        vision: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        text: torch.Tensor,
        text_token_mask: torch.Tensor,
        bbox_embed: list[nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode queries (B, Q, C) starting from boxes ``reference_points`` (B, Q, 4) cxcywh.

        Returns the layer-normed output of the last layer (B, Q, C) and the boxes (B, Q, 4,
        float32) that were that layer's input reference, as the detection heads need them.
        """
        levels = len(spatial_shapes)
        text_attend = text_token_mask[:, None, None, :]
        reference_points = reference_points.float()
        for index, layer in enumerate(self.layers):
            points = reference_points[:, :, None, :].expand(-1, -1, levels, -1)
            sine = coordinate_position_embedding(reference_points, self.d_model // 2)
            query_position = self.reference_points_head(sine.to(queries.dtype))
            queries = layer(
                queries, query_position, points, vision, spatial_shapes, text, text_attend
            )
            if index == len(self.layers) - 1:
                break
            delta = bbox_embed[index](queries).float()
            reference_points = (delta + torch.special.logit(reference_points, eps=1e-5)).sigmoid()
        return self.layer_norm(queries), reference_points
