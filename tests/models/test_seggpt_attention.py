"""SegGPT attention against a naive reference built on the shared decomposed rel-pos bias."""

from __future__ import annotations

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
