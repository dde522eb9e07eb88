"""Global multi-head self-attention with decomposed relative position bias.

On the CPU through :func:`~napari_segany.models.cpu_attention.rel_pos_attention_cpu` (query
chunks, the bias never built in full); elsewhere through ``scaled_dot_product_attention`` with
the bias as an additive mask (fused kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_attention import rel_pos_attention_cpu
from ..fused_linear import linear_then_bias
from ..relative_position import resized_table


class SegGptAttention(nn.Module):
    """Multi-head attention over every token of a stacked ``rows x cols`` patch grid.

    The released model was configured with windowed attention in most blocks, but a bug in the
    original configuration (``i in window_block_indexes`` on a tuple of lists) made every block
    global, and the weights were trained that way; transformers' port does the same.

    The decomposed relative position bias (MViTv2; see ``models/relative_position.py`` for the
    general form) is ``q . R_h[row_q - row_k] + q . R_w[col_q - col_k]``. Here queries and keys
    share one grid, so each factor is one small matrix product of the queries with the table and
    a gather. The keys are ordered column-major, which makes the broadcast sum of the two factors
    run over the longer (row) axis; attention does not depend on the order of the keys.

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
        return linear_then_bias(self.attend(self.project_qkv(hidden), query_rows), self.proj)

    def project_qkv(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, rows, cols, C) layer-normed tokens -> (B, rows, cols, 3 * C) queries, keys, values."""
        return linear_then_bias(hidden, self.qkv)

    def attend(self, qkv: torch.Tensor, query_rows: slice | None = None) -> torch.Tensor:
        """The attention itself, before the output projection ``proj``.

        Parameters
        ----------
        qkv
            (B, rows, cols, 3 * C) from :meth:`project_qkv` (rows may be assembled from parts).
        query_rows
            As in :meth:`forward`.

        Returns
        -------
        torch.Tensor
            (B, q_rows, cols, C) heads concatenated, not yet projected.
        """
        batch, rows, cols, _ = qkv.shape
        qkv = qkv.reshape(batch, rows, cols, 3, self.num_heads, self.head_dim)
        query = qkv[:, :, :, 0].permute(0, 3, 1, 2, 4)  # (B, heads, rows, cols, dim)
        if query_rows is not None:
            query = query[:, :, query_rows]
        query = query.contiguous()
        first_row = 0 if query_rows is None else range(rows)[query_rows][0]
        if qkv.device.type == "cpu" and self.use_relative_position:
            return self._attend_cpu(qkv, query, first_row)
        return self._attend_sdpa(qkv, query, first_row)

    def _attend_sdpa(self, qkv: torch.Tensor, query: torch.Tensor, first_row: int) -> torch.Tensor:
        """:meth:`attend` through ``scaled_dot_product_attention`` with the bias as a mask.

        Arguments as in :meth:`_attend_cpu`.
        """
        batch, rows, cols, _, heads, dim = qkv.shape
        q_rows = query.shape[2]
        # Keys and values column-major: key index = col * rows + row.
        key = qkv[:, :, :, 1].permute(0, 3, 2, 1, 4).reshape(batch, heads, cols * rows, dim)
        value = qkv[:, :, :, 2].permute(0, 3, 2, 1, 4).reshape(batch, heads, cols * rows, dim)
        bias = None
        if self.use_relative_position:
            bias = self._relative_bias(query, rows, cols, first_row)
        query = query.reshape(batch, heads, q_rows * cols, dim)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return out.transpose(1, 2).reshape(batch, q_rows, cols, heads * dim)

    def _attend_cpu(self, qkv: torch.Tensor, query: torch.Tensor, first_row: int) -> torch.Tensor:
        """:meth:`attend` on the CPU: row-major keys, the bias applied chunk by chunk.

        ``qkv`` is (B, rows, cols, 3, heads, dim), ``query`` (B, heads, q_rows, cols, dim)
        contiguous, its rows starting at grid row ``first_row``.
        """
        batch, rows, cols, _, heads, dim = qkv.shape
        q_rows = query.shape[2]
        flat = query.reshape(-1, dim)
        grid = (batch, heads, q_rows, cols)
        rel_h = _offset_products(flat, self.rel_pos_h, rows, grid, 2, first_row)
        rel_w = _offset_products(flat, self.rel_pos_w, cols, grid, 3, 0)
        key = qkv[:, :, :, 1].permute(0, 3, 1, 2, 4).reshape(batch * heads, rows * cols, dim)
        value = qkv[:, :, :, 2].permute(0, 3, 1, 2, 4).reshape(batch * heads, rows * cols, dim)
        out = rel_pos_attention_cpu(
            query.view(batch * heads, q_rows * cols, dim),
            key,
            value,
            rel_h.reshape(batch * heads, q_rows * cols, rows),
            rel_w.reshape(batch * heads, q_rows * cols, cols),
            (rows, cols),
        )
        out = out.view(batch, heads, q_rows, cols, dim).permute(0, 2, 3, 1, 4)
        return out.reshape(batch, q_rows, cols, heads * dim)

    def _relative_bias(
        self, query: torch.Tensor, rows: int, cols: int, first_row: int
    ) -> torch.Tensor:
        """(B, heads, q_rows * cols, cols * rows) bias for column-major keys.

        ``query`` is (B, heads, q_rows, cols, dim), its rows starting at grid row ``first_row``.
        """
        batch, heads, q_rows, _, dim = query.shape
        flat = query.reshape(-1, dim)
        rel_h = _offset_products(
            flat, self.rel_pos_h, rows, (batch, heads, q_rows, cols), 2, first_row
        )
        rel_w = _offset_products(flat, self.rel_pos_w, cols, (batch, heads, q_rows, cols), 3, 0)
        # rel_h: (B, heads, q_rows, cols, key rows); rel_w: (B, heads, q_rows, cols, key cols)
        bias = rel_h[:, :, :, :, None, :] + rel_w[:, :, :, :, :, None]
        return bias.reshape(batch, heads, q_rows * cols, cols * rows)


def _offset_products(
    flat_query: torch.Tensor,
    rel_pos: torch.Tensor,
    size: int,
    grid: tuple[int, int, int, int],
    axis: int,
    first: int,
) -> torch.Tensor:
    """``q . R[pos_q - pos_k]`` along one axis, for every query and every key position.

    Parameters
    ----------
    flat_query
        (B * heads * q_rows * cols, dim) queries in (B, heads, q_rows, cols) order.
    rel_pos
        (L, dim) relative position table along the axis (resized to ``2 * size - 1``).
    size
        Number of key positions along the axis.
    grid
        (B, heads, q_rows, cols).
    axis
        2 for rows, 3 for columns: the query dimension whose position is ``pos_q``.
    first
        Grid position of the first query along that axis.

    Returns
    -------
    torch.Tensor
        (B, heads, q_rows, cols, size), a strided view (no gather): the products with the table
        in reversed order put offset ``pos_q - pos_k`` at ``k + (size - 1 - pos_q)``, so shifting
        the start by one per query position reads the right diagonal.
    """
    table = resized_table(rel_pos, 2 * size - 1).to(flat_query.dtype).flip(0)
    products = (flat_query @ table.T).reshape(*grid, 2 * size - 1)
    strides = list(products.stride())
    strides[axis] -= 1
    return products.as_strided((*grid, size), strides, products.storage_offset() + size - 1 - first)
