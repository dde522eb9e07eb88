"""Decomposed relative position bias (MViTv2 / ViTDet), used by the SAM and SegGPT encoders.

The bias of query ``(i_h, i_w)`` to key ``(j_h, j_w)`` is ``q · R_h[i_h - j_h] + q · R_w[i_w - j_w]``:
two small tables, one per axis, instead of one table over every 2D offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resized_table(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """The (L, C) table linearly interpolated to ``length`` rows (itself when it has them)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.float().T[None], size=length, mode="linear")
    return resized[0].T.to(rel_pos.dtype)


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
    rel_pos = resized_table(rel_pos, int(2 * max(q_size, k_size) - 1))
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
    *,
    scale: float = 1.0,
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
    scale
        Multiplies both factors (applied to the small tables, not to the results).

    Returns
    -------
    rel_h, rel_w
        (B, q_h * q_w, k_h) and (B, q_h * q_w, k_w): the bias of each query to each key row and
        to each key column. The full bias is ``rel_h[:, :, :, None] + rel_w[:, :, None, :]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h)
    table_w = relative_position_table(q_w, k_w, rel_pos_w)
    if scale != 1.0:
        table_h, table_w = table_h * scale, table_w * scale
    table_h, table_w = table_h.to(q.dtype), table_w.to(q.dtype)
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
