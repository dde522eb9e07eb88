"""Global multi-head self-attention with decomposed relative position bias, through SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..relative_position import decomposed_rel_pos_terms


class SegGptAttention(nn.Module):
    """Multi-head attention over every token of a stacked ``rows x cols`` patch grid.

    The released model was configured with windowed attention in most blocks, but a bug in the
    original configuration (``i in window_block_indexes`` on a tuple of lists) made every block
    global, and the weights were trained that way; transformers' port does the same.

    Parameter names follow transformers' ``SegGptAttention``.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        grid_size: tuple[int, int],
        qkv_bias: bool = True,
        use_relative_position: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.use_relative_position = use_relative_position
        if use_relative_position:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size[1] - 1, self.head_dim))

    def forward(self, hidden: torch.Tensor, query_rows: slice | None = None) -> torch.Tensor:
        """Attend over all tokens.

        Parameters
        ----------
        hidden
            (B, rows, cols, C) layer-normed tokens.
        query_rows
            Only compute the output for these patch rows (keys and values still cover the whole
            grid); by default every row.

        Returns
        -------
        torch.Tensor
            (B, q_rows, cols, C).
        """
        batch, rows, cols, channels = hidden.shape
        heads, dim = self.num_heads, self.head_dim
        qkv = self.qkv(hidden).reshape(batch, rows * cols, 3, heads, dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # each (B, heads, rows * cols, dim)
        q_rows = rows
        bias = None
        if self.use_relative_position:
            rel_h, rel_w = decomposed_rel_pos_terms(
                query.reshape(batch * heads, rows * cols, dim),
                self.rel_pos_h,
                self.rel_pos_w,
                (rows, cols),
                (rows, cols),
            )
        if query_rows is not None:
            query = query.reshape(batch, heads, rows, cols, dim)[:, :, query_rows]
            q_rows = query.shape[2]
            query = query.reshape(batch, heads, q_rows * cols, dim)
            if self.use_relative_position:
                rel_h = rel_h.reshape(batch * heads, rows, cols, -1)[:, query_rows]
                rel_w = rel_w.reshape(batch * heads, rows, cols, -1)[:, query_rows]
        if self.use_relative_position:
            n_q = q_rows * cols
            rel_h = rel_h.reshape(batch, heads, n_q, rows, 1)
            rel_w = rel_w.reshape(batch, heads, n_q, 1, cols)
            bias = (rel_h + rel_w).reshape(batch, heads, n_q, rows * cols)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, q_rows, cols, channels)
        return self.proj(out)
