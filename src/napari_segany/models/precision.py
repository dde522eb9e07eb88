"""Device and numeric precision selection shared by every model family."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``None``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` into a device.

    ``"auto"`` (or ``None``) picks CUDA, then MPS, then the CPU. Asking for a device that this
    machine does not have raises ``ValueError`` naming the devices that are available.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} requested but CUDA is not available here; {_available()}"
        )
    if dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device {str(device)!r} requested but MPS is not available here; {_available()}"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {str(device)!r}; {_available()}")
    return dev


def resolve_dtype(precision: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map a precision name to a dtype for ``device``.

    ``"auto"`` is bfloat16 on CUDA devices with native bfloat16 arithmetic (compute capability
    8.0 or newer: Ampere, Ada, Hopper, Blackwell) and float16 on older ones, bfloat16 on CPUs
    with native bfloat16 instructions (AVX512-BF16 or AMX), float16 on MPS, float32 elsewhere.
    """
    if isinstance(precision, torch.dtype):
        if precision not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {precision}; use one of {PRECISIONS}")
        return precision
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    return _DTYPES[name]


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bfloat16 natively (compute capability >= 8.0).

    ``torch.cuda.is_bf16_supported()`` also says yes for older GPUs that only emulate it
    (slowly), so the capability is checked instead.
    """
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _available() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return "available: " + ", ".join(names)
