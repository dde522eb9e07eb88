"""The per-block ``on_block(done, total)`` callback of the SAM and SegGPT encoders (cancellation)."""

from __future__ import annotations

import pytest
import torch

from napari_segany.models.sam import ImageEncoderViT
from napari_segany.models.seggpt import SegGpt
from napari_segany.models.seggpt.config import SegGptArchitecture


class Cancelled(Exception):
    pass


def _tiny_encoder() -> ImageEncoderViT:
    torch.manual_seed(0)
    return ImageEncoderViT(
        image_size=64,
        patch_size=8,
        embed_dim=16,
        depth=4,
        num_heads=2,
        mlp_dim=32,
        out_channels=8,
        window_size=4,
        global_attn_indexes=(1, 3),
    ).eval()


def _tiny_seggpt() -> SegGpt:
    torch.manual_seed(0)
    arch = SegGptArchitecture(
        image_size=(64, 32),
        patch_size=8,
        hidden_size=16,
        num_layers=5,
        num_heads=2,
        mlp_dim=32,
        pretrain_image_size=16,
        merge_index=1,
        feature_indices=(1, 2, 3),
        decoder_hidden_size=8,
    )
    model = SegGpt(arch).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model


def test_sam_encoder_calls_back_after_every_block():
    encoder = _tiny_encoder()
    pixels = torch.randn(1, 3, 64, 64)
    calls: list[tuple[int, int]] = []
    with torch.no_grad():
        with_callback = encoder(pixels, on_block=lambda done, total: calls.append((done, total)))
        without = encoder(pixels)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    torch.testing.assert_close(with_callback, without, atol=0, rtol=0)


def test_sam_encoder_callback_exception_stops_the_forward():
    encoder = _tiny_encoder()
    ran: list[int] = []
    for index, block in enumerate(encoder.blocks):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))

    def cancel_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    with torch.no_grad(), pytest.raises(Cancelled):
        encoder(torch.randn(1, 3, 64, 64), on_block=cancel_after_two)
    assert ran == [0, 1]  # blocks 2 and 3 never ran


def test_sam_embed_image_threads_the_callback(tiny_sam_model):
    calls: list[tuple[int, int]] = []
    size = tiny_sam_model.image_size
    with torch.no_grad():
        tiny_sam_model.embed_image(
            torch.randn(1, 3, size, size), on_block=lambda *args: calls.append(args)
        )
    depth = len(tiny_sam_model.image_encoder.blocks)
    assert calls == [(i, depth) for i in range(1, depth + 1)]


def test_seggpt_callbacks_and_cancel():
    model = _tiny_seggpt()
    prompts = torch.randn(2, 3, 32, 32)
    masks = torch.randn(2, 3, 32, 32)
    prompt_calls: list[tuple[int, int]] = []
    state = model.encode_prompts(prompts, masks, on_block=lambda *args: prompt_calls.append(args))
    assert prompt_calls == [(1, 2), (2, 2)]  # mask stream up to and including merge block 1
    target = torch.randn(1, 3, 32, 32)
    calls: list[tuple[int, int]] = []
    painted = model(target, state, on_block=lambda *args: calls.append(args))
    # Blocks after the last feature block (3) are skipped: 4 blocks run of 5.
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    torch.testing.assert_close(painted, model(target, state), atol=0, rtol=0)

    ran: list[int] = []
    for index, layer in enumerate(model.encoder.layers):
        layer.register_forward_hook(lambda *_, index=index: ran.append(index))

    def cancel_first(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        model(target, state, on_block=cancel_first)
    assert ran == [0]
    with pytest.raises(Cancelled):
        model.encode_prompts(prompts, masks, on_block=cancel_first)
