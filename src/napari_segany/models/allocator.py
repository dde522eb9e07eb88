"""Keep the CPU's scratch memory mapped between calls (glibc's malloc on Linux).

A SAM click allocates and frees a few dozen buffers of 0.5 to 4 MB (image tokens, the upscaling
head's activations, the shown mask's window). glibc serves blocks above its *mmap threshold* with
fresh ``mmap`` calls and hands free memory at the top of the heap back to the system above its
*trim threshold*; every page of such a block is then faulted in and zeroed again on the next
click. glibc raises both thresholds by itself (to at most 32 MiB and 64 MiB) once a block of that
size has been freed, which is why a process that has just computed an image embedding clicks
fast. A process that loaded the embedding from the disk cache has not: measured on this machine
(ViT-B, two cores), its clicks took 11.5-13.0 ms instead of 8.8-9.0 ms, with about 3000 page
faults each (``benchmarks/bench_click_fresh_process.py``).

:func:`keep_scratch_memory` sets the two thresholds to the values glibc itself would reach, once
per process, when a model is loaded onto the CPU. Blocks larger than 32 MiB (images, embeddings of
a whole stack) are still mapped and returned on their own, so peak memory is unchanged; at most
64 MiB of free memory stays with the process per heap. Nothing is done where it would override a
choice: on other C libraries or systems, when the ``MALLOC_*_`` environment variables or
``GLIBC_TUNABLES`` already set malloc's parameters, when another allocator is preloaded
(``LD_PRELOAD`` of jemalloc, tcmalloc, mimalloc), or when ``NAPARI_SEGANY_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest dynamic mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""What glibc sets along with that threshold."""
OPT_OUT_VARIABLE = "NAPARI_SEGANY_MALLOC_TUNING"
DASK_NANNY_TRIM_THRESHOLD = "65536"
"""The ``MALLOC_TRIM_THRESHOLD_`` that dask's nanny gives every worker process by default."""

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)

_lock = threading.Lock()
_state: str | None = None


def keep_scratch_memory(*, dask_worker: bool = False) -> str:
    """Set glibc's mmap and trim thresholds once per process; say what was done.

    Parameters
    ----------
    dask_worker
        This process is a dask worker: ``MALLOC_TRIM_THRESHOLD_=65536`` alone is then dask's
        nanny's default (``distributed.nanny.pre-spawn-environ``), not the user's choice, and is
        replaced. It turns off glibc's own adjustment, so without this every large buffer of
        every operator would be mapped and faulted in afresh (SAM ran about twice as slowly per
        image in such a worker; see :mod:`napari_segany.batch.dask_runner`).

    Returns
    -------
    str
        ``"set"`` (now, or by an earlier call), or why nothing was changed: ``"disabled"``
        (``NAPARI_SEGANY_MALLOC_TUNING=0``), ``"user settings"`` (malloc parameters from the
        environment, or a preloaded allocator), ``"not glibc"``, or ``"refused"`` (``mallopt``
        returned an error).
    """
    global _state
    with _lock:
        if _state is None:
            _state = _apply(dask_worker)
        return _state


def _apply(dask_worker: bool) -> str:
    if os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() in ("0", "false", "no", "off"):
        return "disabled"
    settings = {name: os.environ[name] for name in _USER_SETTINGS if name in os.environ}
    if dask_worker and settings == {"MALLOC_TRIM_THRESHOLD_": DASK_NANNY_TRIM_THRESHOLD}:
        settings = {}
    # GLIBC_TUNABLES' glibc.malloc.*, or another allocator (jemalloc, tcmalloc, mimalloc) preloaded
    if settings or any(
        "malloc" in os.environ.get(name, "") for name in ("GLIBC_TUNABLES", "LD_PRELOAD")
    ):
        return "user settings"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        mallopt = ctypes.CDLL("libc.so.6", use_errno=True).mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either one ends glibc's own adjustment of both (the mmap threshold is the one
    # that can be refused, so it goes first).
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "refused"
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "refused"
    return "set"
