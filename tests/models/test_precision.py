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
