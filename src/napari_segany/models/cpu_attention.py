"""Attention with a decomposed relative position bias on the CPU, without a softmax pass.

``softmax(q k^T / sqrt(d) + rel_h[row(k)] + rel_w[col(k)]) v`` for the SAM and SegGPT encoders.
On the CPU the softmax over the (queries, keys) logits is the most expensive step of a small-head
encoder: three passes over the logits (maximum, exponential and sum, normalisation), in bfloat16
each a conversion to float and back. Here the logits pass through one exponential only:

* The logits are in base 2 (queries and bias scaled by log2 e; ``exp2`` is cheaper than ``exp``)
  and are not shifted by their row maximum: ``2 ** x`` is a normal float for |x| < 126, and
  attention logits are far smaller.
* In reduced precision and for head widths that are not a multiple of 16 (SlimSAM's 14) the row
  sums come out of the value product: the values get a column of ones. Otherwise they are summed
  apart: in float32 with a pairwise sum, as the softmax does (the product's long accumulation
  would cost a few units in the sixth digit), and for 64-wide heads one more column would cost
  the product a whole block of 16.
* The normalisation divides the (queries, d + 1) result, not the (queries, keys) weights.

A row whose sum is not finite or below ``2 ** -MAX_ROW_EXPONENT`` (a logit beyond the float
range, or every weight tiny) is computed again with an ordinary softmax, so the result is always
that of the softmax; the extra work is only ever spent on such rows. Without the shift, the
rounding of the logits is that of the softmax path (which rounds the same logits before
subtracting the maximum).

The bias is applied in one of three ways:

* Folded into the product: queries extended by the bias factors and keys by their one-hot row and
  column. Used for windows (< ``CPU_CHUNKED_MIN_TOKENS`` tokens) and for narrow key grids.
* Per key row (wide grids, narrow heads: SlimSAM-77's global attention): for each key row the
  logits of a chunk of queries are a small product whose extra column is that row's ``rel_h`` and
  whose accumulator is ``rel_w`` broadcast, one ``baddbmm`` over the key rows; no pass of its own
  for the bias.
* Broadcast (wide grids, wide heads: ViT-B/L/H): the bias written into a chunk's logits, ``q k^T``
  accumulated onto it.

Measured on a 2-core AVX512-BF16 CPU, bf16, SlimSAM-77: a global layer's attention 103 ms before
(broadcast bias, product, softmax, value product), a windowed layer's 25 ms
(``benchmarks/results/profile_cpu.md`` has the after).
"""

from __future__ import annotations

import math

import torch

# Above this many key tokens (global attention), the work is done one head and one chunk of
# queries at a time, CPU_CHUNK_BYTES of logits (see below); below it (windows) in groups of
# about CPU_WINDOW_GROUP_LOGITS logits: a whole SAM image's windows at once (SlimSAM, 12 heads:
# 11.5 M, ViT-H, 16 heads: 15.4 M; smaller groups were slower: 10 ms vs 6.6 ms for SlimSAM's).
CPU_CHUNKED_MIN_TOKENS = 1024
CPU_WINDOW_GROUP_LOGITS = 1 << 25
# Key grids narrower than this get the bias folded into the product even when chunked: a
# product per key row is inefficient for short rows (SegGPT's 56 x 28 grid).
CPU_BROADCAST_MIN_WIDTH = 48
# Head widths up to this use one product per key row (SlimSAM-77: 14); wider heads (SlimSAM-50:
# 32, ViT-B/L/H: 64) broadcast the bias into the logits and accumulate the product onto it, as
# the per-row queries would approach the size of the logits (measured per global layer, bf16,
# 2 threads: d = 64 130 ms vs 167 ms, d = 32 87 ms vs 91 ms; d = 14 the other way, 63 vs 77 ms).
CPU_PER_KEY_ROW_MAX_DIM = 16
# Size of one chunk's logits: 1024 queries of SAM's 64 x 64 grid in bf16, 512 in float32; a
# whole head of SegGPT's 56 x 28 grid in either. Interleaved in one process, 2 threads, against
# 512 queries (4 MB in bf16): SlimSAM-77's embedding bf16 381 against 392 ms (another run 415
# against 433; 16 MB: 417), float32 1114 against 1181 ms with 16 MB; SegGPT per target bf16
# 1894 against 1952 ms, float32 7217 against 7242 ms; ViT-B 1439 against 1450 ms.
CPU_CHUNK_BYTES = 8 << 20
# Rows whose sum of weights is not within 2 ** +-MAX_ROW_EXPONENT are recomputed with a softmax.
# Below: the largest weight was under 2 ** -100, and weights much smaller than that would not be
# normal floats. Above: close to overflowing the float range.
MAX_ROW_EXPONENT = 100
LOG2E = math.log2(math.e)

__all__ = [
    "CPU_BROADCAST_MIN_WIDTH",
    "CPU_CHUNKED_MIN_TOKENS",
    "CPU_PER_KEY_ROW_MAX_DIM",
    "CPU_CHUNK_BYTES",
    "grid_indicator",
    "rel_pos_attention_cpu",
]


def rel_pos_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    grid: tuple[int, int],
    *,
    base2: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + rel_h[..., :, None] + rel_w[..., None, :]) v``.

    Parameters
    ----------
    q
        (BH, M, d) queries (any M; e.g. a subset of the grid's rows).
    k, v
        (BH, N, d) keys and values of the N = H * W tokens of a row-major grid.
    rel_h, rel_w
        (BH, M, H) and (BH, M, W) bias factors
        (:func:`~napari_segany.models.relative_position.decomposed_rel_pos_terms`), computed
        from the unscaled queries.
    grid
        (H, W) key grid.
    base2
        The inputs are already in base 2: ``q`` multiplied by ``log2(e) / sqrt(d)`` and the bias
        factors by ``log2(e)`` (cheaper on the small tables and projections they come from than
        on these arrays; see :class:`~napari_segany.models.sam.rel_pos_attention.RelPosAttention`).

    Returns
    -------
    torch.Tensor
        (BH, M, d), in the dtype of ``q``.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_h, rel_w)):
        return _differentiable(q, k, v, rel_h, rel_w, base2)
    if q.dtype == torch.float16:  # 2 ** 16 overflows float16: compute in float32
        args = (t.float() for t in (q, k, v, rel_h, rel_w))
        return rel_pos_attention_cpu(*args, grid, base2=base2).to(q.dtype)
    height, width = grid
    bh, queries, dim = q.shape
    tokens = k.shape[1]
    if not base2:
        q = q * (dim**-0.5 * LOG2E)
        rel_h = rel_h * LOG2E
        rel_w = rel_w * LOG2E
    if q.dtype != torch.float32 and dim % 16:
        # Values with a column of ones: the product's last column is the row sum of the weights
        # (free where the product pads its columns to a multiple of 16 anyway).
        v = torch.cat([v, v.new_ones(bh, tokens, 1)], dim=-1)
    out = q.new_empty(bh, queries, dim)
    row_sums = torch.empty(bh, queries, dtype=torch.float32)
    if tokens < CPU_CHUNKED_MIN_TOKENS or width < CPU_BROADCAST_MIN_WIDTH:
        _folded(q, k, v, rel_h, rel_w, grid, out, row_sums)
    elif dim <= CPU_PER_KEY_ROW_MAX_DIM:
        _per_key_row(q, k, v, rel_h, rel_w, grid, out, row_sums)
    else:
        _broadcast_bias(q, k, v, rel_h, rel_w, grid, out, row_sums)
    limit = 2.0**MAX_ROW_EXPONENT
    redo = ~((row_sums >= 1 / limit) & (row_sums <= limit))  # also NaN
    if bool(redo.any()):
        _redo_rows(out, redo, q, k, v[..., :dim], rel_h, rel_w)
    return out


def _normalise(
    products: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, row_sums: torch.Tensor
) -> None:
    """``out = products[..., :d] / row sums`` and ``row_sums`` (float32) = the row sums of
    ``weights``: the last column of ``products`` when it has d + 1 (values with a column of
    ones), else summed apart (float32 stays float32; bfloat16 sums accumulate in float32)."""
    dim = out.shape[-1]
    if products.shape[-1] > dim:
        sums = products[..., dim:]
        products = products[..., :dim]
    else:
        sums = weights.sum(dim=-1, keepdim=True)
    row_sums.copy_(sums[..., 0])
    # By the float32 copy: the same quotients (bf16 divides in float32 either way), and a third
    # faster than by the strided bf16 column (SlimSAM's windows: 0.39 ms against 0.64 ms a layer).
    torch.div(products, row_sums.unsqueeze(-1), out=out)


def _chunk_rows(queries: int, *, tokens: int, dtype: torch.dtype) -> int:
    """Queries per chunk: about :data:`CPU_CHUNK_BYTES` of (queries, tokens) logits."""
    per_query = tokens * dtype.itemsize
    return min(queries, max(1, CPU_CHUNK_BYTES // per_query))


def _folded(q, k, values, rel_h, rel_w, grid, out, row_sums) -> None:
    """The bias folded into the product: queries ``[q, rel_h, rel_w]``, keys
    ``[k, one-hot row, one-hot column]``. Fills ``out`` (BH, M, d) and ``row_sums`` (BH, M)."""
    height, width = grid
    bh, queries, _ = q.shape
    tokens = k.shape[1]
    q_ext = torch.cat([q, rel_h, rel_w], dim=-1)
    indicator = grid_indicator(height, width, dtype=q.dtype, device=q.device)
    k_ext = torch.cat([k, indicator.expand(bh, -1, -1)], dim=-1).transpose(1, 2)
    if tokens < CPU_CHUNKED_MIN_TOKENS:  # windows: groups of whole windows
        group = max(1, CPU_WINDOW_GROUP_LOGITS // (queries * tokens))
        if group >= bh:  # one product, one normalisation
            weights = torch.bmm(q_ext, k_ext).exp2_()
            _normalise(weights @ values, weights, out, row_sums)
            return
        for start in range(0, bh, group):
            part = slice(start, start + group)
            weights = torch.bmm(q_ext[part], k_ext[part]).exp2_()
            _normalise(weights @ values[part], weights, out[part], row_sums[part])
        return
    chunk = _chunk_rows(queries, tokens=tokens, dtype=q.dtype)
    buffer = q.new_empty(chunk, tokens)
    for head in range(bh):
        for start in range(0, queries, chunk):
            rows = slice(start, start + chunk)
            weights = buffer[: min(chunk, queries - start)]
            torch.mm(q_ext[head, rows], k_ext[head], out=weights).exp2_()
            _normalise(weights @ values[head], weights, out[head, rows], row_sums[head, rows])


def _per_key_row(q, k, values, rel_h, rel_w, grid, out, row_sums) -> None:
    """One product per key row: for key row ``r`` the queries ``[q, rel_h[:, r]]`` meet the keys
    ``[k, 1]`` of that row, accumulated onto ``rel_w`` (``baddbmm`` over the key rows, weights
    laid out (H, queries, W)). Fills ``out`` (BH, M, d) and ``row_sums`` (BH, M)."""
    height, width = grid
    bh, queries, dim = q.shape
    # Heads interleaved in memory (views of one qkv projection) make every chunk's copies strided.
    q, k = q.contiguous(), k.contiguous()
    chunk = _chunk_rows(queries, tokens=k.shape[1], dtype=q.dtype)
    q_ext = q.new_empty(height, chunk, dim + 1)
    keys = k.new_ones(height, dim + 1, width)
    weights = q.new_empty(height, chunk, width)
    products = q.new_empty(height, chunk, values.shape[-1])
    for head in range(bh):
        keys[:, :dim] = k[head].view(height, width, dim).transpose(1, 2)
        head_values = values[head].view(height, width, -1)
        for start in range(0, queries, chunk):
            n = min(chunk, queries - start)
            rows = slice(start, start + n)
            q_part, w_part, p_part = q_ext[:, :n], weights[:, :n], products[:, :n]
            q_part[..., :dim] = q[head, rows]
            q_part[..., dim] = rel_h[head, rows].t()
            torch.baddbmm(rel_w[head, rows][None], q_part, keys, out=w_part).exp2_()
            torch.bmm(w_part, head_values, out=p_part)
            summed = p_part.sum(dim=0)  # over the key rows
            if summed.shape[-1] == dim:  # float32: the row sums apart
                summed = torch.cat([summed, w_part.sum(dim=-1).sum(dim=0)[:, None]], dim=-1)
            _normalise(summed, w_part, out[head, rows], row_sums[head, rows])


def _broadcast_bias(q, k, values, rel_h, rel_w, grid, out, row_sums) -> None:
    """Per head and chunk of queries, the broadcast bias is written into the (rows, N) logits
    and ``q k^T`` accumulated onto it. Fills ``out`` (BH, M, d) and ``row_sums`` (BH, M)."""
    height, width = grid
    bh, queries, dim = q.shape
    tokens = k.shape[1]
    q, k = q.contiguous(), k.contiguous()  # heads interleaved in memory: strided chunks
    chunk = _chunk_rows(queries, tokens=tokens, dtype=q.dtype)
    buffer = q.new_empty(chunk, tokens)
    keys_t = k.transpose(1, 2)
    for head in range(bh):
        for start in range(0, queries, chunk):
            rows = slice(start, start + chunk)
            weights = buffer[: min(chunk, queries - start)]
            torch.add(
                rel_h[head, rows, :, None],
                rel_w[head, rows, None, :],
                out=weights.view(-1, height, width),
            )
            weights.addmm_(q[head, rows], keys_t[head]).exp2_()
            _normalise(weights @ values[head], weights, out[head, rows], row_sums[head, rows])


def _differentiable(q, k, v, rel_h, rel_w, base2: bool) -> torch.Tensor:
    """Plain autograd-friendly attention (the full bias, a softmax) for training: the fast paths
    write into buffers. Training runs long global attention head by head itself
    (:mod:`napari_segany.training.lora`); this serves windows and short grids."""
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
    if base2:  # back to natural units
        logits = (q @ k.transpose(-2, -1) + bias) * math.log(2.0)
    else:
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    return torch.softmax(logits, dim=-1) @ v


def _redo_rows(out, redo, q, k, v, rel_h, rel_w) -> None:
    """Recompute the ``redo`` (BH, M) rows of ``out`` with an ordinary softmax, in float64 (the
    base-2 logits of such rows are large)."""
    for head in redo.any(dim=1).nonzero().flatten().tolist():
        rows = redo[head].nonzero().flatten()
        bias = rel_h[head, rows, :, None].double() + rel_w[head, rows, None, :].double()
        logits = q[head, rows].double() @ k[head].double().t() + bias.flatten(1)
        weights = torch.softmax(logits * math.log(2.0), dim=-1)
        out[head, rows] = (weights @ v[head].double()).to(out.dtype)


def grid_indicator(
    height: int, width: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(H * W, H + W) one-hot rows and columns of the tokens of a row-major (H, W) grid."""
    index = torch.arange(height * width, device=device)
    indicator = torch.zeros(height * width, height + width, dtype=dtype, device=device)
    indicator[index, index // width] = 1
    indicator[index, height + index % width] = 1
    return indicator
