"""Decomposed relative position bias (MViTv2 / ViTDet), used by the SAM and SegGPT encoders.

The bias of query ``(i_h, i_w)`` to key ``(j_h, j_w)`` is ``q · R_h[i_h - j_h] + q · R_w[i_w - j_w]``:
two small tables, one per axis, instead of one table over every 2D offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this many key tokens (global attention), the CPU attention works in query-row chunks of
# one head; below it (windows) the bias is folded into one batched product.
CPU_CHUNKED_MIN_TOKENS = 1024
CPU_QUERY_ROWS = 512
# Key grids narrower than this get the bias folded into the product even when chunked: a
# broadcast add over short rows is slower than the longer product (measured on the CPU, bf16:
# SegGPT's 56 x 28 grid 0.5 ms vs 1.1 ms per 512-query chunk; SAM's 64 x 64 the other way round,
# 1.0 ms vs 1.7 ms).
CPU_BROADCAST_MIN_WIDTH = 48


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the relative position embedding for every (query, key) pair along one axis.

    Parameters
    ----------
    q_size, k_size
        Number of query and key positions along the axis.
    rel_pos
        (L, C) learned table. When ``L != 2 * max(q_size, k_size) - 1`` it is linearly
        interpolated to that length (this is how a model trained at one resolution runs at another).

    Returns
    -------
    torch.Tensor
        (q_size, k_size, C) embedding of the offset between each query and each key.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1).float(),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0).to(rel_pos.dtype)
    # Scale the coordinates of the shorter side when q and k differ in length.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed bias.

    Parameters
    ----------
    q
        (B, q_h * q_w, C) queries, *before* the softmax scale is applied.
    rel_pos_h, rel_pos_w
        (L_h, C) and (L_w, C) tables along the height and width axes.
    q_size, k_size
        (height, width) of the query and key grids.

    Returns
    -------
    rel_h, rel_w
        (B, q_h * q_w, k_h) and (B, q_h * q_w, k_w): the bias of each query to each key row and
        to each key column. The full bias is ``rel_h[:, :, :, None] + rel_w[:, :, None, :]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h).to(q.dtype)
    table_w = relative_position_table(q_w, k_w, rel_pos_w).to(q.dtype)
    batch, _, dim = q.shape
    r_q = q.reshape(batch, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, table_h).reshape(batch, q_h * q_w, k_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, table_w).reshape(batch, q_h * q_w, k_w)
    return rel_h, rel_w


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Full additive attention bias, (B, q_h * q_w, k_h * k_w), for ``scaled_dot_product_attention``.

    Same arguments as :func:`decomposed_rel_pos_terms`.
    """
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    batch, n_q, k_h = rel_h.shape
    k_w = rel_w.shape[-1]
    bias = rel_h[:, :, :, None] + rel_w[:, :, None, :]
    return bias.reshape(batch, n_q, k_h * k_w)


def rel_pos_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + rel_h[..., :, None] + rel_w[..., None, :]) v`` with matrix products.

    On the CPU this is faster than ``scaled_dot_product_attention`` with the bias as a mask
    (which must be built in full): global attention is processed one head and a few hundred
    query rows at a time, so the (rows, N) logits stay in cache; the two bias factors are
    broadcast into the logits buffer and the product is accumulated onto them. Windowed
    attention (few tokens) and narrow key grids fold the bias into the product instead
    (queries extended by the bias factors, keys by their one-hot row and column).

    Parameters
    ----------
    q
        (BH, M, d) queries (any M; e.g. a subset of the grid's rows).
    k, v
        (BH, N, d) keys and values of the N = H * W tokens of a row-major grid.
    rel_h, rel_w
        (BH, M, H) and (BH, M, W) bias factors (:func:`decomposed_rel_pos_terms`), computed
        from the unscaled queries.
    grid
        (H, W) key grid.

    Returns
    -------
    torch.Tensor
        (BH, M, d).
    """
    height, width = grid
    bh, queries, dim = q.shape
    tokens = k.shape[1]
    q = q * dim**-0.5
    fold_bias = tokens < CPU_CHUNKED_MIN_TOKENS or width < CPU_BROADCAST_MIN_WIDTH
    if fold_bias:
        # The bias enters the product itself: appending rel_h, rel_w to each query and the
        # one-hot row and column of each key gives q.k + rel_h[row(k)] + rel_w[col(k)].
        indicator = grid_indicator(height, width, dtype=q.dtype, device=q.device)
        q = torch.cat([q, rel_h, rel_w], dim=-1)
        k = torch.cat([k, indicator.expand(bh, -1, -1)], dim=-1)
    if tokens < CPU_CHUNKED_MIN_TOKENS:  # windows: one batched product
        logits = torch.bmm(q, k.transpose(1, 2))
        return torch.bmm(torch.softmax(logits, dim=-1), v)
    out = q.new_empty(bh, queries, dim)
    keys_t = k.transpose(1, 2)
    # One (rows, N) logits buffer. Without folding, the broadcast bias is written into it first
    # and the product accumulated onto it (addmm_, beta = 1): one pass less than adding the two
    # bias factors to the product afterwards.
    chunk = min(CPU_QUERY_ROWS, queries)
    buffer = q.new_empty(chunk, tokens)
    for head in range(bh):
        for start in range(0, queries, chunk):
            rows = slice(start, start + chunk)
            logits = buffer[: min(chunk, queries - start)]
            if fold_bias:
                torch.mm(q[head, rows], keys_t[head], out=logits)
            else:
                torch.add(
                    rel_h[head, rows, :, None],
                    rel_w[head, rows, None, :],
                    out=logits.view(-1, height, width),
                )
                logits.addmm_(q[head, rows], keys_t[head])
            torch.mm(torch.softmax(logits, dim=-1), v[head], out=out[head, rows])
    return out


def grid_indicator(
    height: int, width: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(H * W, H + W) one-hot rows and columns of the tokens of a row-major (H, W) grid."""
    index = torch.arange(height * width, device=device)
    indicator = torch.zeros(height * width, height + width, dtype=dtype, device=device)
    indicator[index, index // width] = 1
    indicator[index, height + index % width] = 1
    return indicator
