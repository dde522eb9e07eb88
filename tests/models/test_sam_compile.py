"""Sam.compile_decoder: wiring (dynamo with the eager backend: fast, no C++ build), the real CPU
path (inductor with freezing), the rebuild on a weight change and the cache-folder check."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from napari_segany.models.sam.sam import check_compile_cache_private


def _prompt(model):
    size = model.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[[size * 0.3, size * 0.6], [size * 0.7, size * 0.2]]])
    return pixels, points, torch.tensor([[1, 0]])


@pytest.fixture
def eager_backend(monkeypatch, tmp_path):
    """torch.compile with the eager backend, recording its keyword arguments; a private cache."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    real_compile = torch.compile
    calls = []

    def eager_backend_compile(module, **kwargs):
        calls.append(kwargs)
        return real_compile(module, backend="eager", dynamic=kwargs.get("dynamic"))

    monkeypatch.setattr(torch, "compile", eager_backend_compile)
    return calls


def _fake_compile(monkeypatch, tmp_path, run):
    """torch.compile returns a callable that answers ``run(module, inputs)``; a private cache."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(
        torch, "compile", lambda module, **kwargs: lambda **inputs: run(module, inputs)
    )


@pytest.mark.slow
def test_compile_decoder_routes_decode_and_keeps_the_state_dict(eager_backend, tiny_sam_model):
    model = tiny_sam_model
    pixels, points, labels = _prompt(model)
    keys = set(model.state_dict())
    seen = []
    handle = model.mask_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["projections"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            embedding = model.embed_image(pixels)
            eager = model.decode(embedding, points, labels)
            model.compile_decoder(mode="reduce-overhead")
            compiled_decoder = model.__dict__["_compiled_mask_decoder"].module
            compiled = model.decode(embedding, points, labels)
        with torch.enable_grad():  # training: the eager decoder
            model.decode(embedding, points, labels)
    finally:
        handle.remove()
        model.uncompile_decoder()
    assert eager_backend == [{"mode": "reduce-overhead", "dynamic": False}]
    assert compiled_decoder is not None
    # eager, compiled (the per-embedding projections are passed to it too), then eager with grad
    assert len(seen) == 3 and seen[1] is seen[0] and seen[0] is not None and seen[2] is None
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)
    assert set(model.state_dict()) == keys
    assert "_compiled_mask_decoder" not in model.__dict__


@pytest.mark.slow
def test_compile_decoder_auto_traces_with_frozen_weights_on_the_cpu(eager_backend, tiny_sam_model):
    """Dynamo reads inductor's ``freezing`` while tracing: it must be on around the call."""
    from torch._inductor import config

    model = tiny_sam_model
    pixels, points, labels = _prompt(model)
    frozen = []
    handle = model.mask_decoder.register_forward_pre_hook(
        lambda *args: frozen.append(config.freezing)
    )
    try:
        with torch.no_grad():
            embedding = model.embed_image(pixels)
            model.compile_decoder()
            model.decode(embedding, points, labels)
    finally:
        handle.remove()
        model.uncompile_decoder()
    assert eager_backend == [{"mode": None, "dynamic": False}]
    assert frozen == [True] and config.freezing is False


@pytest.mark.slow
def test_compile_decoder_rebuilds_when_the_weights_change(
    eager_backend, monkeypatch, tiny_sam_model
):
    model = tiny_sam_model
    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    pixels, points, labels = _prompt(model)
    weight = model.mask_decoder.output_hypernetworks_mlps[1].layers[0].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            embedding = model.embed_image(pixels)
            model.compile_decoder()
            first = model.__dict__["_compiled_mask_decoder"]
            model.decode(embedding, points, labels)
            assert model.__dict__["_compiled_mask_decoder"] is first and not resets
            weight.mul_(2)  # an in-place update, as an optimiser step does
            model.decode(embedding, points, labels)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        model.uncompile_decoder()
    assert resets == [1] and len(eager_backend) == 2


@pytest.mark.slow
@pytest.mark.skipif(
    not any(map(shutil.which, ("c++", "g++", "clang++"))),
    reason="inductor builds C++: no compiler on this machine",
)
def test_inductor_compiled_decoder_matches_eager_and_follows_new_weights(
    monkeypatch, tmp_path, tiny_sam_model
):
    """The real CPU path: inductor compiles the decoder with frozen weights (C++, seconds)."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = tiny_sam_model
    pixels, points, labels = _prompt(model)
    weight = model.mask_decoder.transformer.layers[1].mlp.lin1.weight
    saved = weight.detach().clone()
    counters.clear()
    try:
        with torch.inference_mode():
            embedding = model.embed_image(pixels)
            eager = model.decode(embedding, points, labels)
            model.compile_decoder()
            compiled = model.decode(embedding, points, labels)
        with torch.no_grad():
            weight.mul_(3)
        with torch.inference_mode():
            compiled_new = model.decode(embedding, points, labels)
            model.uncompile_decoder()
            eager_new = model.decode(embedding, points, labels)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        model.uncompile_decoder()
    assert counters["stats"]["unique_graphs"] >= 2  # compiled, then compiled again
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(eager_new[0], eager[0], atol=1e-2)
    for a, b in zip(compiled_new, eager_new, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compile_cache_must_be_private(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))
    with pytest.raises(PermissionError, match="TORCHINDUCTOR_CACHE_DIR"):
        check_compile_cache_private()
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(fresh))
    assert check_compile_cache_private() == str(fresh)
    assert oct(os.stat(fresh).st_mode & 0o777) == oct(0o700 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failing_compile_falls_back_to_eager_with_a_warning(
    monkeypatch, tmp_path, tiny_sam_model
):
    """A compile error on the first call (here a broken backend) must not lose the click: the
    eager decoder answers, the model stays uncompiled and a warning says why."""

    def broken(module, inputs):
        raise RuntimeError("C++ compile error: cannot find omp.h")

    _fake_compile(monkeypatch, tmp_path, broken)
    model = tiny_sam_model
    pixels, points, labels = _prompt(model)
    with torch.no_grad():
        embedding = model.embed_image(pixels)
        eager = model.decode(embedding, points, labels)
        model.compile_decoder()
        with pytest.warns(RuntimeWarning, match="cannot find omp.h"):
            result = model.decode(embedding, points, labels)
    assert "_compiled_mask_decoder" not in model.__dict__
    for a, b in zip(result, eager, strict=True):
        torch.testing.assert_close(a, b)


def test_bad_inputs_raise_as_without_compiling(monkeypatch, tmp_path, recwarn, tiny_sam_model):
    calls = []

    def passthrough(module, inputs):
        calls.append(1)
        return module(**inputs)

    _fake_compile(monkeypatch, tmp_path, passthrough)
    model = tiny_sam_model
    pixels, points, labels = _prompt(model)
    with torch.no_grad():
        embedding = model.embed_image(pixels)
        model.compile_decoder()
        try:
            with pytest.raises(RuntimeError):
                # two images for one prompt: the decoder's products do not match
                model.decode(torch.cat([embedding, embedding]), points, labels)
            assert calls == [1] and not [w for w in recwarn if w.category is RuntimeWarning]
            assert "_compiled_mask_decoder" in model.__dict__  # kept: the inputs were at fault
        finally:
            model.uncompile_decoder()


def test_compile_decoder_needs_a_cpp_compiler_on_the_cpu(monkeypatch, tiny_sam_model):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        tiny_sam_model.compile_decoder()
    assert "_compiled_mask_decoder" not in tiny_sam_model.__dict__
