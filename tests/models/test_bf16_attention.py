"""The default precision on this CPU (bf16) stays close to fp32 on the fast CPU attention paths
that the tiny whole-model tests do not reach (global attention over >= 1024 tokens)."""

from __future__ import annotations

import pytest
import torch

from napari_segany.models.sam.image_encoder import EncoderBlock
from napari_segany.models.seggpt.attention import SegGptAttention


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim >= 2:
                param.copy_(noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(0.1 * noise)


@pytest.mark.parametrize("grid", [(32, 40), (17, 64)])  # bias folded / broadcast before q.k
def test_global_encoder_block_bf16_close_to_fp32(grid):
    block = EncoderBlock(32, 2, 64, window_size=0, grid_size=grid).eval()
    _randomise(block, 0)
    x = torch.randn(1, *grid, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = block(x)
        got = block.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert expected.abs().max() > 1
    error = (got - expected).abs()
    assert error.max() < 0.05 * expected.abs().max()
    assert error.mean() < 0.01 * expected.abs().mean() + 1e-3


def test_seggpt_attention_bf16_close_to_fp32():
    module = SegGptAttention(hidden_size=32, num_heads=2, grid_size=(56, 28)).eval()
    _randomise(module, 2)
    hidden = torch.randn(2, 56, 28, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = module(hidden, slice(27, 56))
        got = module.to(torch.bfloat16)(hidden.to(torch.bfloat16), slice(27, 56)).float()
    error = (got - expected).abs()
    assert error.max() < 0.05 * expected.abs().max()
    assert error.mean() < 0.01 * expected.abs().mean() + 1e-3
