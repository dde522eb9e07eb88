"""LoRA mode: only the last encoder block's q/v adapters and the decoder change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segany.models.sam.rel_pos_attention import RelPosAttention
from napari_segany.sam import SamPredictor, load_sam
from napari_segany.training import FinetuneSettings, finetune_sam
from napari_segany.training.lora import HEADWISE_MIN_TOKENS, TrainableRelPosAttention
from tests.training.conftest import bright_disks


@pytest.fixture(scope="module")
def lora_run(tiny_sam_model, disk_data):
    images, labels, _, _ = disk_data
    before = {k: v.clone() for k, v in tiny_sam_model.state_dict().items()}
    result = finetune_sam(
        tiny_sam_model,
        images,
        labels,
        mode="lora",
        steps=40,
        settings=FinetuneSettings(learning_rate=3e-3),
    )
    return before, result


def test_only_the_last_block_and_the_decoder_change(tiny_sam_model, lora_run):
    before, result = lora_run
    assert all(torch.equal(v, tiny_sam_model.state_dict()[k]) for k, v in before.items())
    last = len(tiny_sam_model.image_encoder.blocks) - 1
    tuned = result.model.state_dict()
    assert tuned.keys() == before.keys()
    changed = {k for k in before if not torch.equal(tuned[k], before[k])}
    assert f"image_encoder.blocks.{last}.attn.qkv.weight" in changed
    assert all(
        k.startswith("mask_decoder.") or k == f"image_encoder.blocks.{last}.attn.qkv.weight"
        for k in changed
    )
    # Only the q and v rows of the fused projection move (rank <= 4 each); k stays.
    dim = tiny_sam_model.image_encoder.blocks[last].attn.proj.in_features
    delta = (
        tuned[f"image_encoder.blocks.{last}.attn.qkv.weight"]
        - before[f"image_encoder.blocks.{last}.attn.qkv.weight"]
    )
    assert torch.equal(delta[dim : 2 * dim], torch.zeros_like(delta[dim : 2 * dim]))
    assert delta[:dim].abs().max() > 0 and delta[2 * dim :].abs().max() > 0
    singular = torch.linalg.svdvals(delta[:dim].double())  # rank 4 up to float32 rounding
    assert singular[4] < 1e-3 * singular[0]
    adapter_keys = {k for k in result.changed if k.startswith("lora.")}
    assert adapter_keys == {f"lora.blocks.{last}.{n}" for n in ("q_down", "q_up", "v_down", "v_up")}
    assert result.history[-5:] != result.history[:5]


def test_lora_save_and_load_sam_identical(lora_run, tmp_path):
    _, result = lora_run
    result.save(tmp_path / "lora")
    loaded = load_sam(tmp_path / "lora", precision="fp32")
    image, _ = bright_disks(30)
    outs = []
    for model in (result.model, loaded):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        outs.append(predictor.predict(box=np.array([20, 20, 80, 90]), return_logits=True))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_headwise_global_attention_matches_and_has_gradients():
    torch.manual_seed(0)
    grid = (32, 32)  # 1024 tokens: the head-by-head path
    assert grid[0] * grid[1] >= HEADWISE_MIN_TOKENS
    attn = RelPosAttention(16, 2, window_size=0, grid_size=grid)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(1, *grid, 16)
    with torch.no_grad():
        expected = attn(x)
    attn.__class__ = TrainableRelPosAttention
    x.requires_grad_(True)
    out = attn(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_cached_tokens_give_the_models_own_embedding(tiny_sam_model, lora_run):
    """Scoring goes through the cached tokens + the adapted block + neck: the same embedding as
    running the fine-tuned model's whole encoder."""
    from napari_segany.training.finetune import _evaluation_tiles
    from napari_segany.training.prepared_tiles import prepare_tile
    from napari_segany.training.tiles import tiles_from_labels

    _, result = lora_run
    image, labels = bright_disks(31)
    (tile,) = tiles_from_labels(image, labels, tile_size=tiny_sam_model.image_size)
    prepared = prepare_tile(
        SamPredictor(tiny_sam_model), tile, np.random.default_rng(0), keep_tokens=True
    )
    (scored,) = _evaluation_tiles(result.model, [prepared], adapted_block=True)
    via_tokens = SamPredictor(result.model)
    scored.set_image(via_tokens)
    direct = SamPredictor(result.model)
    direct.set_image(tile.image)
    torch.testing.assert_close(
        via_tokens.get_image_embedding(), direct.get_image_embedding(), atol=1e-5, rtol=1e-5
    )
