"""The decoder's first block with its image side projected once per image (Sam.decode's cache)."""

from __future__ import annotations

import pytest
import torch

from napari_segany.sam import load_sam
from tests.fixtures_sam import TINY_IMAGE_SIZE

ATOL = 1e-5


def _pixels(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=gen)


def _points(batch: int):
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(batch, 2, 2, generator=gen) * TINY_IMAGE_SIZE
    return points, torch.tensor([[1, 0]]).repeat(batch, 1)


def _plain_decode(model, embedding, points, labels, multimask=True):
    """The decoder without precomputed projections (every prompt projects the image itself)."""
    sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


@pytest.fixture
def model(tiny_sam_hf_folder):
    return load_sam(tiny_sam_hf_folder, precision="fp32")


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("multimask", [True, False])
def test_projected_first_block_equals_the_plain_decoder(model, batch, multimask):
    points, labels = _points(batch)
    with torch.no_grad():
        embedding = model.embed_image(_pixels())
        low_res, iou = model.decode(embedding, points, labels, multimask_output=multimask)
        assert "_cached_projections" in model.__dict__  # the projected path ran
        expected, expected_iou = _plain_decode(model, embedding, points, labels, multimask)
    torch.testing.assert_close(low_res, expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou, atol=ATOL, rtol=1e-4)


def test_projections_are_reused_and_follow_changes(model):
    points, labels = _points(1)
    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    with torch.no_grad():
        embedding = model.embed_image(_pixels())
        model.decode(embedding, points, labels)
        first = model.__dict__["_cached_projections"][2]
        model.decode(embedding, points, labels)
        assert model.__dict__["_cached_projections"][2] is first  # a second click reuses them

        attention.k_proj.weight.mul_(1.5)  # weights changed in place (e.g. fine-tuning)
        low_res, _ = model.decode(embedding, points, labels)
        assert model.__dict__["_cached_projections"][2] is not first
        torch.testing.assert_close(
            low_res, _plain_decode(model, embedding, points, labels)[0], atol=ATOL, rtol=1e-4
        )

        second = model.__dict__["_cached_projections"][2]
        embedding.add_(0.5)  # the embedding changed in place
        low_res, _ = model.decode(embedding, points, labels)
        assert model.__dict__["_cached_projections"][2] is not second
        torch.testing.assert_close(
            low_res, _plain_decode(model, embedding, points, labels)[0], atol=ATOL, rtol=1e-4
        )

        other = model.embed_image(_pixels(1))  # another image
        low_res, _ = model.decode(other, points, labels)
        torch.testing.assert_close(
            low_res, _plain_decode(model, other, points, labels)[0], atol=ATOL, rtol=1e-4
        )


def test_no_projection_cache_while_training(model):
    """With gradients on, every call projects the image itself, so gradients reach the first
    block's image-side weights and nothing computed with old weights is reused."""
    points, labels = _points(2)
    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    with torch.no_grad():
        embedding = model.embed_image(_pixels())
    model.mask_decoder.requires_grad_(True)  # loaded for inference: parameters frozen
    low_res, _ = model.decode(embedding, points, labels)
    low_res.sum().backward()
    assert "_cached_projections" not in model.__dict__
    assert attention.k_proj.weight.grad is not None
    assert attention.k_proj.weight.grad.abs().sum() > 0
