"""Sam.decode on the CPU: a large batch of prompts goes through the mask decoder a few at a time."""

from __future__ import annotations

import pytest
import torch

import napari_segany.models.sam.sam as sam_module
from napari_segany.sam import load_sam
from tests.fixtures_sam import TINY_IMAGE_SIZE, TINY_LOW_RES

BATCH = 7


@pytest.fixture
def model(tiny_sam_hf_folder):
    return load_sam(tiny_sam_hf_folder, precision="fp32")


def _inputs(model, kind: str):
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=gen)
    embedding = model.embed_image(pixels)
    if kind == "an embedding per prompt":
        noise = torch.randn(BATCH, *embedding.shape[1:], generator=gen)
        embedding = embedding + 0.3 * noise
    points = torch.rand(BATCH, 2, 2, generator=gen) * TINY_IMAGE_SIZE
    labels = torch.tensor([[1, 0]]).repeat(BATCH, 1)
    masks = None
    if kind == "mask prompts":
        masks = torch.randn(BATCH, 1, TINY_LOW_RES, TINY_LOW_RES, generator=gen)
    return embedding, points, labels, masks


def _prompt_bytes(model) -> int:
    """Upscaling-head activations of one prompt, as Sam.decode counts them."""
    side = TINY_LOW_RES
    return side * side * (model.mask_decoder.transformer_dim // 8) * model.dtype.itemsize


@pytest.mark.parametrize("kind", ["one embedding", "an embedding per prompt", "mask prompts"])
@pytest.mark.parametrize("multimask", [True, False])
def test_chunked_decoding_gives_the_results_of_one_call(model, monkeypatch, kind, multimask):
    embedding, points, labels, masks = _inputs(model, kind)
    batches = []
    decoder_forward = model.mask_decoder.forward

    def counting_forward(**inputs):
        batches.append(inputs["sparse_prompt_embeddings"].shape[0])
        return decoder_forward(**inputs)

    monkeypatch.setattr(model.mask_decoder, "forward", counting_forward)
    with torch.no_grad():
        # The tiny model's prompts are small: the default budget takes all 7 at once.
        whole, whole_iou = model.decode(
            embedding, points, labels, mask_input=masks, multimask_output=multimask
        )
        assert batches == [BATCH]
        batches.clear()
        monkeypatch.setattr(sam_module, "CPU_DECODER_CHUNK_BYTES", 3 * _prompt_bytes(model))
        chunked, chunked_iou = model.decode(
            embedding, points, labels, mask_input=masks, multimask_output=multimask
        )
    assert batches == [3, 3, 1]
    assert (
        chunked.shape == whole.shape == (BATCH, 3 if multimask else 1, TINY_LOW_RES, TINY_LOW_RES)
    )
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked_iou, whole_iou, atol=1e-5, rtol=1e-4)


def test_chunk_size_follows_the_precision(model, monkeypatch):
    """The budget is in bytes: half the prompts per call in float32 as in bf16."""
    monkeypatch.setattr(sam_module, "CPU_DECODER_CHUNK_BYTES", 4 * _prompt_bytes(model))
    assert model._prompts_per_decoder_call(64) == 4
    bf16 = model.to(torch.bfloat16)
    assert bf16._prompts_per_decoder_call(64) == 8
    monkeypatch.setattr(sam_module, "CPU_DECODER_CHUNK_BYTES", 1)
    assert bf16._prompts_per_decoder_call(64) == 1  # at least one prompt per call
