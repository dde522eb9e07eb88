"""SAM model parity with transformers' SamModel and the official segment_anything on identical weights."""

from __future__ import annotations

import pytest
import torch

from napari_segany.models.sam.image_encoder import EncoderBlock, PatchEmbedding
from napari_segany.sam import load_sam
from tests.fixtures_sam import TINY_IMAGE_SIZE, TINY_LOW_RES

ATOL = 1e-4


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(
        1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def embeddings(tiny_sam_model, tiny_sam_hf_model):
    pixels = _pixels()
    with torch.no_grad():
        ours = tiny_sam_model.embed_image(pixels)
        theirs = tiny_sam_hf_model.get_image_embeddings(pixels)
    return ours, theirs


def test_image_embedding_matches_transformers(embeddings):
    ours, theirs = embeddings
    assert ours.shape == (1, 32, 8, 8)
    assert theirs.abs().max() > 0.5  # randomised weights: a real signal, not ~0
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


def test_image_embedding_matches_official(tiny_sam_model, official_tiny_sam):
    pixels = _pixels(1)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_sam_model.embed_image(pixels),
            official_tiny_sam.image_encoder(pixels),
            atol=ATOL,
            rtol=1e-4,
        )


def _prompts(kind: str, batch: int = 1):
    gen = torch.Generator().manual_seed(7)
    points = torch.rand(batch, 3, 2, generator=gen) * TINY_IMAGE_SIZE
    labels = torch.tensor([[1, 0, 1]]).repeat(batch, 1)
    corners = torch.rand(batch, 2, 2, generator=gen) * TINY_IMAGE_SIZE
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    masks = torch.randn(batch, 1, TINY_LOW_RES, TINY_LOW_RES, generator=gen) * 4
    return {
        "points": (points, labels, None, None),
        "box": (None, None, boxes, None),
        "points+box": (points, labels, boxes, None),
        "mask": (None, None, None, masks),
        "points+mask": (points, labels, None, masks),
        "box+points+mask": (points, labels, boxes, masks),
    }[kind]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    "kind", ["points", "box", "points+box", "mask", "points+mask", "box+points+mask"]
)
def test_decoder_matches_transformers(
    tiny_sam_model, tiny_sam_hf_model, embeddings, kind, multimask
):
    ours_embedding, theirs_embedding = embeddings
    batch = 3 if kind == "box" else 1
    points, labels, boxes, masks = _prompts(kind, batch)
    with torch.no_grad():
        low_res, iou = tiny_sam_model.decode(
            ours_embedding, points, labels, boxes, masks, multimask_output=multimask
        )
        reference = tiny_sam_hf_model(
            image_embeddings=theirs_embedding,
            input_points=None if points is None else points[None],
            input_labels=None if labels is None else labels[None],
            input_boxes=None if boxes is None else boxes[None],
            input_masks=masks,
            multimask_output=multimask,
        )
    expected_masks = reference.pred_masks[0]
    assert low_res.shape == (batch, 3 if multimask else 1, TINY_LOW_RES, TINY_LOW_RES)
    assert expected_masks.abs().max() > 0.5
    torch.testing.assert_close(low_res, expected_masks, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(iou, reference.iou_scores[0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_matches_official(tiny_sam_model, official_tiny_sam, multimask):
    points, labels, boxes, masks = _prompts("box+points+mask")
    pixels = _pixels(2)
    with torch.no_grad():
        embedding = tiny_sam_model.embed_image(pixels)
        low_res, iou = tiny_sam_model.decode(embedding, points, labels, boxes, masks, multimask)
        sparse, dense = official_tiny_sam.prompt_encoder(
            points=(points, labels), boxes=boxes, masks=masks
        )
        expected, expected_iou = official_tiny_sam.mask_decoder(
            image_embeddings=official_tiny_sam.image_encoder(pixels),
            image_pe=official_tiny_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
    torch.testing.assert_close(low_res, expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou, atol=ATOL, rtol=1e-4)


def test_dense_positional_encoding_is_cached_and_refreshed_on_load(tiny_sam_hf_folder):
    model = load_sam(tiny_sam_hf_folder, precision="fp32")
    encoder = model.prompt_encoder
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first  # cached, not recomputed per call
    expected = encoder.pe_layer.grid(*encoder.image_embedding_size)[None]
    torch.testing.assert_close(first, expected)
    state = model.state_dict()
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.ones_like(
        state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    )
    model.load_state_dict(state)
    assert not torch.allclose(encoder.get_dense_pe(), first)
    torch.testing.assert_close(encoder.get_dense_pe(), encoder.pe_layer.grid(8, 8)[None])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_close_to_float32(tiny_sam_hf_folder, tiny_sam_model, precision):
    if precision == "fp16":
        try:
            torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
        except RuntimeError:
            pytest.skip("this CPU build has no float16 matmul")
    model = load_sam(tiny_sam_hf_folder, precision=precision)
    assert model.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    pixels = _pixels(3)
    points, labels, boxes, _ = _prompts("points+box")
    with torch.no_grad():
        reference = tiny_sam_model.embed_image(pixels)
        reduced = model.embed_image(pixels)
        ref_masks, ref_iou = tiny_sam_model.decode(reference, points, labels, boxes)
        masks, iou = model.decode(reduced, points, labels, boxes)
    assert reduced.dtype == model.dtype
    scale = reference.abs().max()
    assert (reduced.float() - reference).abs().max() < 0.08 * scale
    assert (masks.float() - ref_masks).abs().max() < 0.1 * ref_masks.abs().max()
    assert (iou.float() - ref_iou).abs().max() < 0.1 * ref_iou.abs().max() + 0.05


@pytest.mark.parametrize(("grid", "window"), [((7, 10), 3), ((6, 6), 3), ((5, 4), 0)])
def test_encoder_block_matches_official_block(grid, window):
    """Windowed (with and without padding) and global blocks against segment_anything's Block."""
    from tests.fixtures_sam import import_segment_anything, randomize_weights

    Block = import_segment_anything().modeling.image_encoder.Block
    official = Block(
        16, 2, mlp_ratio=2.0, use_rel_pos=True, window_size=window, input_size=grid
    ).eval()
    randomize_weights(official, seed=3)
    ours = EncoderBlock(16, 2, 32, window_size=window, grid_size=grid, layer_norm_eps=1e-5).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, *grid, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(64, 48), (70, 53)], ids=["whole patches", "remainder"])
def test_patch_embedding_equals_the_convolution(size):
    """On the CPU the patches go through one product instead of the strided convolution
    (``fused_linear.patch_embedding``, also SegGPT's): the same tokens and gradients (sizes that
    leave a remainder use the convolution itself)."""
    torch.manual_seed(0)
    embed = PatchEmbedding(16, 3, 24).double()
    pixels = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    tokens = embed(pixels)
    expected = embed.proj(pixels).permute(0, 2, 3, 1)
    assert tokens.shape == (2, size[0] // 16, size[1] // 16, 24)
    torch.testing.assert_close(tokens, expected, atol=1e-12, rtol=1e-12)
    grads = torch.autograd.grad(tokens.square().sum(), [pixels, embed.proj.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [pixels, embed.proj.weight])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("grid", [(33, 33), (32, 40), (5, 7), (17, 64)])
def test_cpu_attention_matches_masked_sdpa(grid):
    """Every CPU path is exact: query-row chunks for >= 1024 tokens with the bias folded into the
    product (narrow grids) or broadcast before it (width >= CPU_BROADCAST_MIN_WIDTH, (17, 64)),
    one folded batched product for windows."""
    from napari_segany.models.relative_position import decomposed_rel_pos_terms
    from napari_segany.models.sam.rel_pos_attention import (
        CPU_CHUNKED_MIN_TOKENS,
        rel_pos_attention_cpu,
        rel_pos_attention_sdpa,
    )

    gen = torch.Generator().manual_seed(0)
    tokens, heads, dim = grid[0] * grid[1], 3, 8
    q, k, v = (torch.randn(heads, tokens, dim, generator=gen) for _ in range(3))
    rel_pos_h = torch.randn(2 * grid[0] - 1, dim, generator=gen)
    rel_pos_w = torch.randn(2 * grid[1] - 1, dim, generator=gen)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, grid, grid)
    bias = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(heads, tokens, tokens)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    got = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, grid)
    assert (tokens >= CPU_CHUNKED_MIN_TOKENS) == (grid != (5, 7))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rel_pos_attention_sdpa(q, k, v, rel_h, rel_w, grid), expected)


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_sam_hf_folder, tiny_sam_model):
    model = load_sam(tiny_sam_hf_folder, device="cuda", precision="fp32")
    pixels = _pixels(5)
    points, labels, boxes, masks = _prompts("box+points+mask")
    with torch.no_grad():
        expected = tiny_sam_model.embed_image(pixels)
        embedding = model.embed_image(pixels.cuda())
        torch.testing.assert_close(embedding.cpu(), expected, atol=1e-3, rtol=1e-3)
        low_res, iou = model.decode(
            embedding, points.cuda(), labels.cuda(), boxes.cuda(), masks.cuda()
        )
        ref_low_res, ref_iou = tiny_sam_model.decode(expected, points, labels, boxes, masks)
    torch.testing.assert_close(low_res.cpu(), ref_low_res, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(iou.cpu(), ref_iou, atol=1e-3, rtol=1e-3)
