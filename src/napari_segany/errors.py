"""Errors shared by every part of napari-segany, and turning allocator failures into clear ones.

Out of memory shows up in three forms: Python's ``MemoryError`` (numpy), CUDA's
``torch.OutOfMemoryError``, and on the CPU a ``RuntimeError`` from PyTorch's allocator
("DefaultCPUAllocator: can't allocate memory: you tried to allocate ... bytes"). All three become
:class:`OutOfMemoryError` (a ``MemoryError``) saying what ran out and what to do::

    from napari_segany.errors import explain_out_of_memory

    with explain_out_of_memory("upscaling 24 masks", "use fewer boxes"):
        masks = predictor.predict(box=boxes)

The widgets use :func:`is_out_of_memory` to word their notification the same way. No torch import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["OutOfMemoryError", "explain_out_of_memory", "is_out_of_memory", "out_of_memory_message"]

_MARKERS = (
    "can't allocate memory",
    "out of memory",
    "not enough memory",
    "failed to allocate",
)


class OutOfMemoryError(MemoryError):
    """An operation ran out of (CPU or GPU) memory; the message says what to do instead."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) means that memory ran out."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def out_of_memory_message(what: str, hint: str = "") -> str:
    """``"out of memory while <what>: <hint>"``, the wording of every out-of-memory error."""
    advice = hint or "use a smaller image, tile or model, or close other programs"
    return f"out of memory while {what}: {advice}"


@contextmanager
def explain_out_of_memory(what: str, hint: str = "") -> Iterator[None]:
    """Re-raise any out-of-memory error inside the block as :class:`OutOfMemoryError`.

    Parameters
    ----------
    what
        What was being done ("computing the image embedding").
    hint
        What the user can do about it ("use fewer boxes").
    """
    try:
        yield
    except OutOfMemoryError:
        raise
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise OutOfMemoryError(out_of_memory_message(what, hint)) from exc
