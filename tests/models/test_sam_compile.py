"""Sam.compile_decoder wiring on the CPU (dynamo with the eager backend: fast, no C++ build)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_compile_decoder_routes_decode_and_keeps_the_state_dict(monkeypatch, tiny_sam_model):
    real_compile = torch.compile
    calls = []

    def eager_backend_compile(module, **kwargs):
        calls.append(kwargs)
        return real_compile(module, backend="eager", dynamic=kwargs.get("dynamic"))

    monkeypatch.setattr(torch, "compile", eager_backend_compile)
    model = tiny_sam_model
    size = model.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[[size * 0.3, size * 0.6], [size * 0.7, size * 0.2]]])
    labels = torch.tensor([[1, 0]])
    keys = set(model.state_dict())
    with torch.no_grad():
        embedding = model.embed_image(pixels)
        eager = model.decode(embedding, points, labels)
        model.compile_decoder(mode="reduce-overhead")
        try:
            compiled_decoder = model.__dict__["_compiled_mask_decoder"]
            seen = []
            handle = model.mask_decoder.register_forward_pre_hook(lambda *a: seen.append(1))
            compiled = model.decode(embedding, points, labels)
            handle.remove()
        finally:
            model.uncompile_decoder()
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
    assert compiled_decoder is not None and seen  # decode went through the compiled module
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)
    assert set(model.state_dict()) == keys
    assert "_compiled_mask_decoder" not in model.__dict__
