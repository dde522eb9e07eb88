"""The GPU code paths: fused SDPA kernels in bf16/fp16, compiled decoder, SegGPT on CUDA.

Every test here is marked ``gpu`` and is skipped on machines without CUDA (see conftest.py);
``benchmarks/gpu_check.sh`` runs them together with the GPU benchmarks.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from napari_segany.models.cpu_attention import rel_pos_attention_cpu
from napari_segany.models.relative_position import decomposed_rel_pos_terms
from napari_segany.models.sam.rel_pos_attention import rel_pos_attention_sdpa
from napari_segany.models.seggpt.attention import SegGptAttention

pytestmark = pytest.mark.gpu

HALF = [torch.bfloat16, torch.float16]


def _qkv(grid, heads=4, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    q, k, v = (torch.randn(heads, tokens, dim, generator=gen) for _ in range(3))
    rel_pos_h = torch.randn(2 * grid[0] - 1, dim, generator=gen) * 0.3
    rel_pos_w = torch.randn(2 * grid[1] - 1, dim, generator=gen) * 0.3
    return q, k, v, rel_pos_h, rel_pos_w


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("grid", [(14, 14), (64, 64)])  # a window and the global 64 x 64 grid
def test_sam_attention_runs_in_the_memory_efficient_kernel(dtype, grid):
    """The rel-pos bias as an additive mask is accepted by the memory-efficient SDPA kernel
    (restricting SDPA to it raises if our layout or mask is not supported)."""
    q, k, v, rel_pos_h, rel_pos_w = _qkv(grid)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    expected = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, grid)
    cuda = [t.cuda().to(dtype) for t in (q, k, v, rel_h, rel_w)]
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        got = rel_pos_attention_sdpa(*cuda, grid)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", HALF)
def test_seggpt_attention_runs_in_the_memory_efficient_kernel(dtype):
    torch.manual_seed(0)
    module = SegGptAttention(hidden_size=64, num_heads=2, grid_size=(56, 28))
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.1)
    hidden = torch.randn(2, 56, 28, 64)
    with torch.no_grad():
        expected = module(hidden, slice(27, 56))
        module_gpu = module.cuda().to(dtype)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            got = module_gpu(hidden.cuda().to(dtype), slice(27, 56))
    torch.testing.assert_close(got.float().cpu(), expected, atol=5e-2, rtol=5e-2)


def test_sam_bf16_embedding_and_compiled_decoder_on_cuda(tiny_sam_hf_folder, tiny_sam_model):
    from napari_segany.sam import load_sam

    model = load_sam(tiny_sam_hf_folder, device="cuda", precision="bf16")
    size = model.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    points = torch.tensor([[[size * 0.3, size * 0.6]]])
    labels = torch.ones(1, 1, dtype=torch.int64)
    with torch.no_grad():
        expected = tiny_sam_model.embed_image(pixels)
        embedding = model.embed_image(pixels.cuda())
        scale = expected.abs().max()
        assert (embedding.float().cpu() - expected).abs().max() < 0.05 * scale
        eager = model.decode(embedding, points.cuda(), labels.cuda())
        model.compile_decoder(mode="reduce-overhead")
        try:
            for _ in range(3):  # warm-up, capture, replay
                compiled = model.decode(embedding, points.cuda(), labels.cuda())
        finally:
            model.uncompile_decoder()
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    assert "_compiled_mask_decoder" not in model.__dict__
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
