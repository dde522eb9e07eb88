"""The CPU scratch memory stays mapped between calls (glibc's malloc thresholds)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from napari_segany import checkpoints
from napari_segany.models import allocator

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's",
)

# Twelve 4 MiB buffers alive at once and then all freed, ten times over, as a click's scratch
# memory is: prints what keep_scratch_memory() did and the share of those pages faulted in again.
_BURSTS = """
import resource, torch
from napari_segany.models.allocator import keep_scratch_memory
torch.set_num_threads(1)
state = keep_scratch_memory()
def burst():
    blocks = [torch.empty(2**22, dtype=torch.uint8).fill_(1) for _ in range(12)]
    del blocks
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    burst()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(state, faults / (10 * 12 * 2**22 / resource.getpagesize()), sep=";")
"""


def _bursts(**env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    clean.pop(allocator.OPT_OUT_VARIABLE, None)
    out = (
        subprocess.run(
            [sys.executable, "-c", _BURSTS],
            env={**clean, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        .stdout.strip()
        .split(";")
    )
    return out[0], float(out[1])


@glibc_only
def test_scratch_memory_is_not_faulted_in_again():
    state, tuned = _bursts()
    assert state == "set"
    assert tuned < 0.08
    # glibc's starting thresholds, held fixed (they are the user's now, so they are kept): every
    # buffer is mapped and unmapped on its own, and every burst faults its pages in again.
    state, untuned = _bursts(MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    assert state == "user settings"
    assert untuned > 0.5


@glibc_only
@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_TRIM_THRESHOLD_": "1048576"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"},
        {"LD_PRELOAD": "/nonexistent/libjemalloc.so.2"},  # not loaded (a warning), still respected
        {allocator.OPT_OUT_VARIABLE: "0"},
    ],
)
def test_the_users_malloc_settings_are_kept(env):
    state, _ = _bursts(**env)
    assert state == ("disabled" if allocator.OPT_OUT_VARIABLE in env else "user settings")


def test_decided_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator, "_apply", lambda dask_worker: calls.append(1) or "not glibc")
    assert allocator.keep_scratch_memory() == "not glibc"
    assert allocator.keep_scratch_memory() == "not glibc"
    assert calls == [1]


def test_loading_a_model_onto_the_cpu_keeps_scratch_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(checkpoints, "keep_scratch_memory", lambda: calls.append(1))
    layer = torch.nn.Linear(3, 2)
    model = checkpoints.build_with_weights(
        lambda: torch.nn.Linear(3, 2),
        layer.state_dict(),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert torch.equal(model.weight, layer.weight)
    assert calls == [1]


@pytest.mark.parametrize(
    ("env", "dask_worker", "expected"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": allocator.DASK_NANNY_TRIM_THRESHOLD}, True, "set"),
        ({"MALLOC_TRIM_THRESHOLD_": allocator.DASK_NANNY_TRIM_THRESHOLD}, False, "user settings"),
        ({"MALLOC_TRIM_THRESHOLD_": "1048576"}, True, "user settings"),
        (
            {
                "MALLOC_TRIM_THRESHOLD_": allocator.DASK_NANNY_TRIM_THRESHOLD,
                "MALLOC_TOP_PAD_": "0",
            },
            True,
            "user settings",
        ),
    ],
)
@glibc_only
def test_dask_nannys_trim_threshold_is_replaced_in_a_worker(
    monkeypatch, env, dask_worker, expected
):
    for name in (*allocator._USER_SETTINGS, "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(allocator.OPT_OUT_VARIABLE, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.keep_scratch_memory(dask_worker=dask_worker) == expected
