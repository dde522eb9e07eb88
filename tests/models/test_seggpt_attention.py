"""SegGPT attention against a naive reference built on the shared decomposed rel-pos bias."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_segany.models.relative_position import decomposed_rel_pos_bias
from napari_segany.models.seggpt.attention import SegGptAttention


def naive_attention(module: SegGptAttention, hidden: torch.Tensor) -> torch.Tensor:
    batch, rows, cols, channels = hidden.shape
    heads, dim = module.num_heads, module.head_dim
    qkv = module.qkv(hidden).reshape(batch, rows * cols, 3, heads, dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, rows * cols, dim).unbind(0)
    scores = (q * dim**-0.5) @ k.transpose(1, 2)
    scores = scores + decomposed_rel_pos_bias(
        q, module.rel_pos_h, module.rel_pos_w, (rows, cols), (rows, cols)
    )
    out = (scores.softmax(-1) @ v).reshape(batch, heads, rows, cols, dim)
    return module.proj(out.permute(0, 2, 3, 1, 4).reshape(batch, rows, cols, channels))


@pytest.mark.parametrize("table_grid", [(6, 3), (9, 5)])  # (9, 5): tables get interpolated
@pytest.mark.parametrize("query_rows", [None, slice(2, 6), slice(5, 6)])
def test_attention_matches_naive_reference(table_grid, query_rows):
    torch.manual_seed(0)
    module = SegGptAttention(hidden_size=16, num_heads=2, grid_size=table_grid)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.5)
    hidden = torch.randn(3, 6, 3, 16)
    with torch.no_grad():
        expected = naive_attention(module, hidden)
        got = module(hidden, query_rows)
    if query_rows is not None:
        expected = expected[:, query_rows]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("query_rows", [None, slice(13, 40), slice(39, 40)])
def test_cpu_chunked_attention_matches_sdpa_path(query_rows):
    """Over 1024 tokens the CPU path works in query chunks (row-major keys); the SDPA path used
    on accelerators (column-major keys, full bias) must give the same result."""
    from napari_segany.models.cpu_attention import CPU_CHUNKED_MIN_TOKENS

    torch.manual_seed(1)
    rows, cols = 40, 26
    assert rows * cols >= CPU_CHUNKED_MIN_TOKENS
    module = SegGptAttention(hidden_size=16, num_heads=2, grid_size=(30, 20))
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.5)
    hidden = torch.randn(2, rows, cols, 16)
    with torch.no_grad():
        qkv = module.project_qkv(hidden)
        split = qkv.reshape(2, rows, cols, 3, 2, 8)
        query = split[:, :, :, 0].permute(0, 3, 1, 2, 4)
        first = 0 if query_rows is None else query_rows.start
        query = (query if query_rows is None else query[:, :, query_rows]).contiguous()
        cpu = module._attend_cpu(split, query, first)
        sdpa = module._attend_sdpa(split, query, first)
        # In float64: at these weights (logits up to ~100) a float32 naive softmax is itself
        # ~1.6e-5 off, so comparing two float32 results would test their rounding, not the path.
        expected = naive_attention(copy.deepcopy(module).double(), hidden.double()).float()
    torch.testing.assert_close(cpu, sdpa, atol=1e-5, rtol=1e-5)
    got = module.proj(cpu)
    torch.testing.assert_close(
        got, expected if query_rows is None else expected[:, query_rows], atol=1e-5, rtol=1e-5
    )
