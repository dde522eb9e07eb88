"""The units of batch work: one 2D slice of one input (or one tile of a large slice, and the
merge of its tiles), and the finishing step of one output.

:func:`run_slice_task` is a pure function of (task, resources): it reads its slice, runs the
operation and writes the labels itself (into a TIFF for a 2D input, into its own chunks of a zarr
store for stacks and zarr inputs), returning only a small :class:`SliceResult`. The same function
runs in-process and on dask workers, so the outputs are the same whichever runs it, in any order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from napari_segany.batch.inputs import InputSpec
from napari_segany.batch.outputs import OutputTarget
from napari_segany.batch.volumes import AxisChoice
from napari_segany.batch.worker_resources import WorkerResources

__all__ = [
    "FinishTask",
    "MergeTask",
    "SliceResult",
    "SliceTask",
    "TileResult",
    "TileTask",
    "run_finish_task",
    "run_merge_task",
    "run_slice_task",
    "run_tile_task",
]


@dataclass(frozen=True)
class SliceTask:
    """One slice to process.

    Attributes
    ----------
    item
        Index of the input in the run (for bookkeeping).
    input
        The input and how to read its axes.
    axes
        Axis choice (stack axis, channel).
    key
        The slice key (``()`` for a 2D input).
    contrast_limits
        Intensities mapped to 0..255 (one pair per stack, so all slices scale alike); None:
        per-slice automatic.
    target
        Where the labels go; None for operations that write elsewhere (``embed``).
    operation
        What to do (:mod:`napari_segany.batch.operations`).
    """

    item: int
    input: InputSpec
    axes: AxisChoice
    key: tuple[int, ...]
    contrast_limits: tuple[float, float] | None
    target: OutputTarget | None
    operation: Any


@dataclass(frozen=True)
class SliceResult:
    """What a slice task reports back: counts and time, never the labels."""

    item: int
    key: tuple[int, ...]
    objects: int
    max_label: int
    seconds: float


@dataclass(frozen=True)
class FinishTask:
    """Turn an output's finished slices into the final output (TIFF or complete zarr)."""

    item: int
    target: OutputTarget
    max_label: int


@dataclass(frozen=True)
class TileTask:
    """One tile of a large slice (map step; :class:`MergeTask` is the reduce step).

    ``box`` is ``[x0, y0, x1, y1]`` in the slice; ``contrast_limits`` are the whole slice's, so
    every tile is scaled alike.
    """

    item: int
    input: InputSpec
    axes: AxisChoice
    key: tuple[int, ...]
    box: tuple[int, int, int, int]
    contrast_limits: tuple[float, float] | None
    operation: Any


@dataclass(frozen=True)
class TileResult:
    """A tile's mask candidates in slice coordinates (cropped masks, never the whole slice)."""

    item: int
    key: tuple[int, ...]
    box: tuple[int, int, int, int]
    candidates: Any
    seconds: float


@dataclass(frozen=True)
class MergeTask:
    """Merge the tiles of one slice into labels and write them (the reduce step)."""

    item: int
    key: tuple[int, ...]
    shape: tuple[int, int]
    parts: tuple[tuple[tuple[int, int, int, int], Any], ...]
    seconds: float
    target: OutputTarget | None
    operation: Any


def _write(target: OutputTarget | None, key: tuple[int, ...], outcome: Any) -> int:
    """Write an outcome's labels where they belong; returns their largest id."""
    if outcome.labels is None or target is None:
        return 0
    max_label = int(outcome.labels.max(initial=0))
    if target.kind == "tiff" and not target.is_stack:
        target.write_image(outcome.labels)
    else:
        target.write_slice(key, outcome.labels, objects=outcome.objects)
    return max_label


def run_slice_task(task: SliceTask, resources: WorkerResources) -> SliceResult:
    """Read the slice, run the operation, write the labels; return counts and seconds."""
    start = time.perf_counter()
    volume = resources.volume(task.input, task.axes)
    image = volume.read_slice(task.key)
    outcome = task.operation.run(image, task.contrast_limits, resources)
    max_label = _write(task.target, task.key, outcome)
    return SliceResult(task.item, task.key, outcome.objects, max_label, time.perf_counter() - start)


def run_tile_task(task: TileTask, resources: WorkerResources) -> TileResult:
    """Read one tile of the slice and find its mask candidates."""
    start = time.perf_counter()
    volume = resources.volume(task.input, task.axes)
    tile = volume.read_tile(task.key, task.box)
    found = task.operation.run_tile(tile, list(task.box), task.contrast_limits, resources)
    return TileResult(task.item, task.key, task.box, found, time.perf_counter() - start)


def run_merge_task(task: MergeTask, resources: WorkerResources) -> SliceResult:
    """Merge a slice's tiles, write its labels; the seconds include the tiles'."""
    start = time.perf_counter()
    parts = [(list(box), found) for box, found in task.parts]
    outcome = task.operation.merge_tiles(parts, task.shape)
    max_label = _write(task.target, task.key, outcome)
    seconds = task.seconds + time.perf_counter() - start
    return SliceResult(task.item, task.key, outcome.objects, max_label, seconds)


def run_finish_task(task: FinishTask, resources: WorkerResources) -> int:
    """Finish one output (see :meth:`OutputTarget.finish`); returns the item index."""
    task.target.finish(task.max_label)
    return task.item
