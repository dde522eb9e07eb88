"""Multi-head self-attention over a 2D token grid with decomposed relative position bias.

Two exact computations of ``softmax(q k^T / sqrt(d) + bias) v``:

* ``scaled_dot_product_attention`` with the bias as an additive mask (CUDA, MPS): fused kernels.
* On the CPU, where the fused kernel is slow with a mask, plain matrix products (oneDNN, fast in
  bfloat16), one exponential and no softmax pass; the full bias is never built
  (:func:`~napari_segany.models.cpu_attention.rel_pos_attention_cpu`, shared with SegGPT).
  Measured single-threaded on an AVX512-BF16 CPU, ViT-B, bf16, per layer: global 0.36 s versus
  0.96 s with the masked fused kernel, before the softmax-free version took another third off.

The output projection can take the block's residual as its accumulator (``residual=``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_attention import (
    CPU_CHUNKED_MIN_TOKENS,
    LOG2E,
    grid_indicator,
    rel_pos_attention_cpu,
)
from ..fused_linear import linear_then_bias, residual_plus_linear
from ..relative_position import decomposed_rel_pos_terms

__all__ = [
    "CPU_CHUNKED_MIN_TOKENS",
    "RelPosAttention",
    "grid_indicator",
    "rel_pos_attention_cpu",
    "rel_pos_attention_sdpa",
]


class RelPosAttention(nn.Module):
    """Multi-head self-attention of a (B, H, W, C) grid with decomposed relative position bias.

    With ``window_size > 0`` attention runs within non-overlapping windows; the grid is padded at
    the bottom and right to whole windows. As in the original, padded tokens take part in the
    attention as zero inputs; their projections (the qkv bias) are filled in directly, so the
    projections run only on real tokens. Parameter names (``qkv``, ``proj``, ``rel_pos_h``,
    ``rel_pos_w``) follow the original release.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        grid_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, embed_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            rel_grid = (window_size, window_size) if window_size > 0 else grid_size
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_grid[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_grid[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, *, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); plus ``residual`` (B, H, W, C) when given (fused)."""
        batch, height, width, channels = x.shape
        heads = self.num_heads
        head_dim = channels // heads
        qkv = linear_then_bias(x, self.qkv)
        if self.window_size > 0:
            size = self.window_size
            qkv, (padded_h, padded_w) = self._pad_to_windows(qkv)
            n_h, n_w = padded_h // size, padded_w // size
            # (B, n_h, size, n_w, size, 3, heads, d) -> (3, B * n_h * n_w * heads, size * size, d)
            qkv = qkv.view(batch, n_h, size, n_w, size, 3, heads, head_dim).permute(
                5, 0, 1, 3, 6, 2, 4, 7
            )
            q, k, v = qkv.reshape(3, -1, size * size, head_dim).unbind(0)
            grid = (size, size)
        else:
            qkv = qkv.reshape(batch, height * width, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.reshape(3, batch * heads, height * width, head_dim).unbind(0)
            grid = (height, width)
        out = self._attend(q, k, v, grid)
        if self.window_size > 0:
            out = out.view(batch, n_h, n_w, heads, size, size, head_dim).permute(
                0, 1, 4, 2, 5, 3, 6
            )
            out = out.reshape(batch, padded_h, padded_w, channels)[:, :height, :width]
        else:
            out = out.view(batch, heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
            out = out.reshape(batch, height, width, channels)
        if residual is not None:
            return residual_plus_linear(residual, out, self.proj)
        return linear_then_bias(out, self.proj)

    def _pad_to_windows(self, qkv: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad (B, H, W, 3C) projections to whole windows with the projection of a zero token."""
        batch, height, width, channels = qkv.shape
        size = self.window_size
        padded_h, padded_w = -(-height // size) * size, -(-width // size) * size
        if (padded_h, padded_w) == (height, width):
            return qkv, (height, width)
        fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(channels)
        full = qkv.new_empty(batch, padded_h, padded_w, channels)
        full[:, :height, :width] = qkv
        full[:, height:] = fill
        full[:, :height, width:] = fill
        return full, (padded_h, padded_w)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """(BH, N, d) queries, keys, values of an (H, W) grid -> (BH, N, d)."""
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        if q.device.type == "cpu":  # base 2 (see cpu_attention), scaled on the small tables
            q = q.contiguous()  # global attention: heads interleaved in the qkv projection
            rel_h, rel_w = decomposed_rel_pos_terms(
                q, self.rel_pos_h, self.rel_pos_w, grid, grid, scale=LOG2E
            )
            q = q * (q.shape[-1] ** -0.5 * LOG2E)
            return rel_pos_attention_cpu(q, k, v, rel_h, rel_w, grid, base2=True)
        rel_h, rel_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, grid, grid)
        return rel_pos_attention_sdpa(q, k, v, rel_h, rel_w, grid)


def rel_pos_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Same as :func:`rel_pos_attention_cpu`, through ``scaled_dot_product_attention`` with the
    bias as an additive mask (fused kernels on CUDA)."""
    tokens = grid[0] * grid[1]
    bias = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(1, -1, tokens, tokens)
    # 4D (1, BH, N, d) inputs: the layout the fused CUDA kernels with a float mask expect.
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias)[0]
