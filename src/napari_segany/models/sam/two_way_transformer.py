"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Parameter names follow the original segment_anything release (``mask_decoder.transformer.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeedForward


class DownsampledAttention(nn.Module):
    """Multi-head attention whose queries, keys and values are projected to ``dim / downsample_rate``."""

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embed_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(
                f"num_heads {num_heads} must divide the attention width {internal_dim}"
            )
        self.q_proj = nn.Linear(embed_dim, internal_dim)
        self.k_proj = nn.Linear(embed_dim, internal_dim)
        self.v_proj = nn.Linear(embed_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embed_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, N_q, C), k and v (B, N_k, C) -> (B, N_q, C)."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = DownsampledAttention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.cross_attn_token_to_image = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = FeedForward(embed_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm4 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.cross_attn_image_to_token = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, N_tokens, C), keys (B, h * w, C) and their positional encodings -> updated both."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks followed by a last token-to-image attention."""

    def __init__(
        self,
        *,
        depth: int,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        layer_norm_eps: float = 1e-5,
        final_layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embed_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                layer_norm_eps=layer_norm_eps,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embed_dim, eps=final_layer_norm_eps)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Parameters
        ----------
        image_embedding
            (B, C, h, w) image embedding (plus dense prompt embedding).
        image_pe
            (B or 1, C, h, w) positional encoding of the image grid.
        point_embedding
            (B, N_tokens, C) output tokens followed by the sparse prompt embeddings.

        Returns
        -------
        queries
            (B, N_tokens, C) processed tokens.
        keys
            (B, h * w, C) processed image tokens, row-major over (h, w).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
