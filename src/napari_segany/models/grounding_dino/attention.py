"""Dense attention blocks of Grounding DINO: multi-head attention and image↔text bi-attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with separate query/key/value projections (SDPA).

    Parameters
    ----------
    dim
        Feature width of queries, keys and values.
    num_heads
        Heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, Q, C), (B, K, C), (B, K, C) → (B, Q, C).

        ``attention_mask`` broadcasts to (B, heads, Q, K): boolean (True = attend) or additive.
        """
        batch, num_queries, dim = queries.shape
        head_dim = dim // self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(queries)),
            heads(self.key(keys)),
            heads(self.value(values)),
            attn_mask=attention_mask,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, num_queries, dim))


class BiMultiHeadAttention(nn.Module):
    """Image-to-text and text-to-image attention sharing one similarity matrix.

    Parameters
    ----------
    vision_dim, text_dim
        Widths of the image and text tokens.
    embed_dim, num_heads
        Width and heads of the shared attention space.
    """

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.vision_proj = nn.Linear(vision_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.values_vision_proj = nn.Linear(vision_dim, embed_dim)
        self.values_text_proj = nn.Linear(text_dim, embed_dim)
        self.out_vision_proj = nn.Linear(embed_dim, vision_dim)
        self.out_text_proj = nn.Linear(embed_dim, text_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        vision: torch.Tensor,
        text: torch.Tensor,
        text_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (B, N, Cv) and text tokens (B, T, Ct) → their updates, same shapes.

        ``text_padding`` (B, T) is True for padding tokens, which image tokens then ignore.
        """
        batch, num_vision, _ = vision.shape
        num_text = text.shape[1]
        query = self._heads(self.vision_proj(vision) * self.scale)
        key = self._heads(self.text_proj(text))
        vision_values = self._heads(self.values_vision_proj(vision))
        text_values = self._heads(self.values_text_proj(text))
        # Similarities (B, heads, N, T) and both softmaxes in float32: they are small (T text
        # tokens) and the softmax over all N image tokens loses too much in half precision. The
        # global max keeps the exponentials in range.
        scores = (query @ key.transpose(-1, -2)).float()
        scores = (scores - scores.max()).clamp(-50000, 50000)
        text_scores = scores.transpose(-1, -2)
        text_scores = (text_scores - text_scores.amax(-1, keepdim=True)).clamp(-50000, 50000)
        text_probs = text_scores.softmax(-1).to(vision_values.dtype)
        if text_padding is not None:
            scores = scores.masked_fill(text_padding[:, None, None, :], float("-inf"))
        vision_probs = scores.softmax(-1).to(text_values.dtype)
        vision_out = (vision_probs @ text_values).transpose(1, 2).reshape(batch, num_vision, -1)
        text_out = (text_probs @ vision_values).transpose(1, 2).reshape(batch, num_text, -1)
        return self.out_vision_proj(vision_out), self.out_text_proj(text_out)
