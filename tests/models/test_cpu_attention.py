"""The softmax-free CPU attention (models/cpu_attention.py) against a float64 softmax."""

from __future__ import annotations

import pytest
import torch

from napari_segany.models import cpu_attention
from napari_segany.models.cpu_attention import (
    CPU_BROADCAST_MIN_WIDTH,
    CPU_CHUNKED_MIN_TOKENS,
    rel_pos_attention_cpu,
)
from napari_segany.models.relative_position import decomposed_rel_pos_terms

# (5, 7): windows, one folded product; (33, 33): chunked, folded (narrow); (17, 64): chunked,
# one product per key row.
GRIDS = [(5, 7), (33, 33), (17, 64)]


def _inputs(grid, heads=3, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    q, k, v = (torch.randn(heads, tokens, dim, generator=gen, dtype=torch.float64) for _ in "qkv")
    rel_pos_h = torch.randn(2 * grid[0] - 1, dim, generator=gen, dtype=torch.float64)
    rel_pos_w = torch.randn(2 * grid[1] - 1, dim, generator=gen, dtype=torch.float64)
    return q, k, v, rel_pos_h, rel_pos_w


def _softmax_attention(q, k, v, rel_h, rel_w):
    bias = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).flatten(2)
    logits = q @ k.transpose(1, 2) * q.shape[-1] ** -0.5 + bias
    return torch.softmax(logits, dim=-1) @ v


def test_grids_take_every_path():
    tokens = [h * w for h, w in GRIDS]
    assert tokens[0] < CPU_CHUNKED_MIN_TOKENS <= min(tokens[1:])
    assert GRIDS[1][1] < CPU_BROADCAST_MIN_WIDTH <= GRIDS[2][1]


@pytest.mark.parametrize("grid", GRIDS)
def test_rows_beyond_the_float_range_are_recomputed(grid):
    """Rows whose logits overflow ``2 ** x`` (huge queries) or all underflow it (a huge negative
    bias) are redone with a softmax: without that they would be inf / 0 and give NaN."""
    q, k, v, rel_pos_h, rel_pos_w = _inputs(grid)
    q[0, :4] *= 80.0  # logits in the thousands
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    rel_h[1, 5:9] -= 400.0  # every logit of these rows near -400
    expected = _softmax_attention(q, k, v, rel_h, rel_w)
    args = [t.float() for t in (q, k, v, rel_h, rel_w)]
    got = rel_pos_attention_cpu(*args, grid)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
def test_float32_matches_float64_softmax(grid):
    q, k, v, rel_pos_h, rel_pos_w = _inputs(grid, seed=1)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    expected = _softmax_attention(q, k, v, rel_h, rel_w)
    got = rel_pos_attention_cpu(*[t.float() for t in (q, k, v, rel_h, rel_w)], grid)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_is_as_close_as_a_softmax_in_that_precision(grid, dtype):
    """bf16 (the CPU default where supported) and fp16: no further from the float64 result than
    the plain computation in that precision (logits, broadcast bias, softmax, product)."""
    q, k, v, rel_pos_h, rel_pos_w = _inputs(grid, seed=2)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    expected = _softmax_attention(q, k, v, rel_h, rel_w)
    low = [t.to(dtype) for t in (q, k, v, rel_h, rel_w)]
    got = rel_pos_attention_cpu(*low, grid)
    assert got.dtype == dtype
    plain = _softmax_attention(*low)
    error = (got.double() - expected).abs().max()
    plain_error = (plain.double() - expected).abs().max()
    assert error <= 1.25 * plain_error
    assert error < 0.05 * expected.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("grid", "dim"),
    [(GRIDS[1], 8), (GRIDS[2], 8), (GRIDS[2], 32)],
    ids=["folded", "per-key-row", "broadcast"],
)
def test_chunks_of_any_size_give_the_same_result(monkeypatch, dtype, grid, dim):
    """Global attention works through the queries in chunks of a fixed size of logits (1024
    queries of SAM's 64 x 64 grid in bf16): chunks that leave a shorter last one give the same
    rows as a single chunk, and the softmax's result, on each of the three chunked paths."""
    q, k, v, rel_pos_h, rel_pos_w = _inputs(grid, dim=dim, seed=4)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    expected = _softmax_attention(q, k, v, rel_h, rel_w)
    args = [t.to(dtype) for t in (q, k, v, rel_h, rel_w)]
    tokens = grid[0] * grid[1]
    assert cpu_attention.CPU_CHUNK_BYTES // (tokens * dtype.itemsize) >= tokens  # one chunk
    whole = rel_pos_attention_cpu(*args, grid)
    monkeypatch.setattr(cpu_attention, "CPU_CHUNK_BYTES", 100 * tokens * 4)
    chunked = rel_pos_attention_cpu(*args, grid)  # chunks of 100 (fp32) or 200 (bf16) queries
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    if dtype == torch.float32:
        torch.testing.assert_close(chunked, expected.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("base2", [False, True])
def test_gradients_when_inputs_require_them(base2):
    """Training (LoRA in windowed blocks) differentiates through the attention: the same values
    as the fast path, and correct gradients (float64 gradcheck)."""
    grid = (3, 4)
    q, k, v, rel_pos_h, rel_pos_w = _inputs(grid, heads=2, dim=4, seed=3)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, rel_h, rel_w)]

    def attention(*args):
        return rel_pos_attention_cpu(*args, grid, base2=base2)

    assert torch.autograd.gradcheck(attention, inputs)
    with torch.no_grad():
        fast = attention(*inputs)
    torch.testing.assert_close(attention(*inputs), fast)
