"""Decomposed relative position bias against a direct per-pair computation."""

import torch

from napari_segany.models.relative_position import decomposed_rel_pos_bias, relative_position_table


def test_table_indexes_offsets():
    rel_pos = torch.arange(7, dtype=torch.float32)[:, None]  # offsets -3..3 for size 4
    table = relative_position_table(4, 4, rel_pos)[..., 0]
    for i in range(4):
        for j in range(4):
            assert table[i, j] == (i - j) + 3


def test_table_interpolates_a_table_trained_at_another_size():
    rel_pos = torch.linspace(0, 1, 7)[:, None]
    table = relative_position_table(8, 8, rel_pos)
    assert table.shape == (8, 8, 1)
    assert torch.isclose(table[0, 7, 0], torch.tensor(0.0)) and torch.isclose(
        table[7, 0, 0], torch.tensor(1.0)
    )


def test_bias_equals_direct_sum_over_axes():
    torch.manual_seed(0)
    q_size, k_size, dim = (3, 4), (3, 4), 5
    q = torch.randn(2, 12, dim)
    rel_h, rel_w = torch.randn(5, dim), torch.randn(7, dim)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, q_size, k_size)
    assert bias.shape == (2, 12, 12)
    for b in range(2):
        for qi in range(12):
            qh, qw = divmod(qi, 4)
            for ki in range(12):
                kh, kw = divmod(ki, 4)
                expected = q[b, qi] @ rel_h[qh - kh + 2] + q[b, qi] @ rel_w[qw - kw + 3]
                torch.testing.assert_close(bias[b, qi, ki], expected)
