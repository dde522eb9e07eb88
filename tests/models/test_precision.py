"""Device and precision selection."""

import pytest
import torch

from napari_segany.models import precision


def test_auto_device_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_mps_available", lambda: False)
    assert precision.resolve_device("auto") == torch.device("cpu")
    assert precision.resolve_device(None) == torch.device("cpu")


def test_missing_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        precision.resolve_device("cuda")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_named_precisions(name, dtype):
    assert precision.resolve_dtype(name, torch.device("cpu")) is dtype


def test_auto_precision_follows_native_bf16_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_dtype("auto", cpu) is torch.float32


def test_unknown_precision_lists_the_choices():
    with pytest.raises(ValueError, match="fp32"):
        precision.resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)],
)
def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch, capability, dtype):
    """The CUDA branch of "auto": bf16 from Ampere on, fp16 on older GPUs (which would only
    emulate bf16, although torch.cuda.is_bf16_supported() says yes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    device = precision.resolve_device("auto")
    assert device == torch.device("cuda")
    assert precision.resolve_dtype("auto", device) is dtype
    assert precision.resolve_dtype("auto", torch.device("cuda:1")) is dtype
    # Explicit names are not overridden by the capability.
    assert precision.resolve_dtype("fp32", device) is torch.float32
    assert precision.resolve_dtype("bf16", device) is torch.bfloat16


def test_auto_precision_on_mps_is_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_mps_available", lambda: True)
    device = precision.resolve_device("auto")
    assert device == torch.device("mps")
    assert precision.resolve_dtype("auto", device) is torch.float16


@pytest.mark.gpu
def test_auto_precision_on_this_gpu():
    device = precision.resolve_device("auto")
    assert device.type == "cuda"
    major, _ = torch.cuda.get_device_capability(device)
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert precision.resolve_dtype("auto", device) is expected
