"""Grounding DINO encoder: image↔text fusion, text self-attention and deformable image attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import BiMultiHeadAttention, MultiheadAttention
from .config import GroundingDinoConfig
from .deformable_attention import (
    MultiscaleDeformableAttention,
)
from .position_encoding import coordinate_position_embedding


class FusionLayer(nn.Module):
    """Pre-norm bi-directional attention; updates scaled by learned per-channel gains."""

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        d = config.d_model
        self.layer_norm_vision = nn.LayerNorm(d, config.layer_norm_eps)
        self.layer_norm_text = nn.LayerNorm(d, config.layer_norm_eps)
        self.attn = BiMultiHeadAttention(
            d, d, config.encoder_ffn_dim // 2, config.encoder_attention_heads // 2
        )
        self.vision_param = nn.Parameter(torch.full((d,), 1e-4))
        self.text_param = nn.Parameter(torch.full((d,), 1e-4))

    def forward(
        self, vision: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.layer_norm_vision(vision)
        text = self.layer_norm_text(text)
        delta_vision, delta_text = self.attn(vision, text, text_padding)
        return vision + self.vision_param * delta_vision, text + self.text_param * delta_text


class TextEnhancerLayer(nn.Module):
    """Post-norm self-attention over text tokens (phrase-blocked) and a ReLU MLP."""

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = MultiheadAttention(d, config.encoder_attention_heads // 2)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim // 2)
        self.fc2 = nn.Linear(config.encoder_ffn_dim // 2, d)
        self.layer_norm_before = nn.LayerNorm(d, config.layer_norm_eps)
        self.layer_norm_after = nn.LayerNorm(d, config.layer_norm_eps)

    def forward(
        self, text: torch.Tensor, attend: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        query = text + position
        text = self.layer_norm_before(text + self.self_attn(query, query, text, attend))
        return self.layer_norm_after(text + self.fc2(F.relu(self.fc1(text))))


class DeformableLayer(nn.Module):
    """Post-norm multi-scale deformable self-attention over image tokens and a ReLU MLP."""

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = MultiscaleDeformableAttention(
            d, config.encoder_attention_heads, config.num_feature_levels, config.encoder_n_points
        )
        self.self_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)

    def forward(
        self,
        vision: torch.Tensor,
        position: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        attended = self.self_attn(vision + position, vision, reference_points, spatial_shapes)
        vision = self.self_attn_layer_norm(vision + attended)
        return self.final_layer_norm(vision + self.fc2(F.relu(self.fc1(vision))))


class EncoderLayer(nn.Module):
    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        self.text_enhancer_layer = TextEnhancerLayer(config)
        self.fusion_layer = FusionLayer(config)
        self.deformable_layer = DeformableLayer(config)


class GroundingDinoEncoder(nn.Module):
    """Stack of (fusion → text self-attention → deformable image attention) layers."""

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(
        self,
        vision: torch.Tensor,
        vision_position: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        text: torch.Tensor,
        text_padding: torch.Tensor,
        text_attend: torch.Tensor,
        text_position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode image tokens (B, S, C) and text tokens (B, T, C) together.

        ``text_padding`` (B, T) is True at padding; ``text_attend`` (B, T, T) is True where token
        i may attend to token j (phrase blocks); ``text_position_ids`` (B, T) restart per phrase.
        """
        reference_points = encoder_reference_points(spatial_shapes, vision.shape[0], vision.device)
        text_position = coordinate_position_embedding(
            text_position_ids[..., None], self.d_model
        ).to(text.dtype)
        attend = text_attend[:, None]
        for layer in self.layers:
            vision, text = layer.fusion_layer(vision, text, text_padding)
            text = layer.text_enhancer_layer(text, attend, text_position)
            vision = layer.deformable_layer(
                vision, vision_position, reference_points, spatial_shapes
            )
        return vision, text


def encoder_reference_points(
    spatial_shapes: list[tuple[int, int]], batch: int, device
) -> torch.Tensor:
    """Pixel centres of every level, normalized: (B, S, levels, 2) float32 (x, y)."""
    points = []
    for height, width in spatial_shapes:
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, device=device) / height,
            torch.linspace(0.5, width - 0.5, width, device=device) / width,
            indexing="ij",
        )
        points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
    points = torch.cat(points, 0)
    return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), 2)
