"""Plan and run a batch: inputs -> slice tasks -> outputs, with progress and a run record.

:func:`run_batch` finds the inputs, opens each one lazily on the client (metadata only, plus a
small sample of a stack for its contrast limits), skips finished outputs and finished slices of
interrupted ones, submits one task per remaining slice (for ``everything`` on a slice larger than
the tile size: one task per tile, then a merge task) to an executor (this process or dask),
finishes each output as soon as its last slice is in, and records everything in
``OUT/napari-segany-run.json``. A failing input is reported by name and the others complete.

Memory budget on the client: metadata and one slice at a time; the workers hold one slice (plus
its labels and the model) each. No labels travel back to the client.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from napari_segany.batch.executors import Executor, make_executor
from napari_segany.batch.inputs import InputSpec, discover_inputs
from napari_segany.batch.outputs import PROGRESS_FOLDER, OutputTarget, plan_output
from napari_segany.batch.run_record import RUN_FILE_NAME, InputRecord, RunRecord
from napari_segany.batch.tasks import (
    FinishTask,
    MergeTask,
    SliceResult,
    SliceTask,
    TileTask,
    run_finish_task,
    run_merge_task,
    run_slice_task,
    run_tile_task,
)
from napari_segany.batch.volumes import AxisChoice, ImageVolume, InputError, open_volume

__all__ = ["BatchOptions", "run_batch"]


@dataclass(frozen=True)
class BatchOptions:
    """How to run a batch (everything but the operation).

    Attributes
    ----------
    out_dir
        Output folder; None for operations that write no labels (``embed``).
    axes
        Stack axis and channel choice for every input.
    recursive
        Search sub-folders of folder arguments.
    overwrite
        Recompute outputs that exist (default: skip them, so a rerun resumes).
    quiet
        No progress bar (errors are still printed).
    contrast_limits
        Intensities mapped to 0..255 for every input; None: automatic (one pair per stack).
    stack_contrast
        Without ``contrast_limits``, scale every slice of a stack by one pair computed from a
        sample of its slices (True), or each slice by its own percentiles (False, as a script's
        ``contrast_limits=None``).
    record_dir
        Where the run record goes when there is no ``out_dir`` (``embed``: the cache folder).
    workers, threads, scheduler
        Executor choice (see :func:`napari_segany.batch.executors.make_executor`).
    """

    out_dir: Path | None
    axes: AxisChoice = field(default_factory=AxisChoice)
    recursive: bool = False
    overwrite: bool = False
    quiet: bool = False
    contrast_limits: tuple[float, float] | None = None
    stack_contrast: bool = True
    record_dir: Path | None = None
    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None


@dataclass
class _ItemState:
    spec: InputSpec
    record: InputRecord
    target: OutputTarget | None
    remaining: int = 0
    max_label: int = 0
    errors: list[str] = field(default_factory=list)
    tiles: dict[tuple[int, ...], _TiledSlice] = field(default_factory=dict)


@dataclass
class _TiledSlice:
    """The tiles of one large slice as they come in; a :class:`MergeTask` once all are in."""

    key: tuple[int, ...]
    shape: tuple[int, int]
    expected: int
    target: OutputTarget | None
    operation: Any
    parts: list[tuple[tuple[int, int, int, int], Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: BaseException | None = None
    received: int = 0

    def add(self, task: TileTask, result: Any) -> MergeTask | BaseException | None:
        """Take one tile's result; when it was the last: the merge task, or the first error."""
        self.received += 1
        if isinstance(result, BaseException):
            self.error = self.error or result
        else:
            self.parts.append((tuple(result.box), result.candidates))
            self.seconds += result.seconds
        if self.received < self.expected:
            return None
        if self.error is not None:
            return self.error
        parts = tuple(sorted(self.parts, key=lambda part: (part[0][1], part[0][0])))
        self.parts = []
        return MergeTask(
            task.item, self.key, self.shape, parts, self.seconds, self.target, self.operation
        )


class _VolumeSlices:
    """``volume[key]`` -> slice in (H, W[, C]) order, for :func:`stack_contrast_limits`."""

    def __init__(self, volume: ImageVolume) -> None:
        self.volume = volume
        self.dtype = volume.dtype

    def __getitem__(self, key: tuple[int, ...]) -> np.ndarray:
        return self.volume.read_slice(key)


class _SliceView:
    """One slice of a volume as a lazy (H, W[, C]) array: ``dtype``, ``shape``, 2D slicing."""

    def __init__(self, volume: ImageVolume, key: tuple[int, ...]) -> None:
        self.volume, self.key = volume, key
        self.dtype = volume.dtype
        colour = volume.layout.colour_axis
        self.shape = volume.layout.spatial_shape + (
            (volume.layout.shape[colour],) if colour is not None else ()
        )

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index[:2]
        return self.volume.read_region(self.key, rows, cols)


def stack_limits(volume: ImageVolume) -> tuple[float, float] | None:
    """One contrast pair for a stack (robust percentiles of a sample of slices); None for 2D."""
    if not volume.leading_shape:
        return None
    from napari_segany.seggpt.slice_planning import StackLayout, stack_contrast_limits

    layout = StackLayout(
        volume.leading_shape, volume.layout.spatial_shape, volume.layout.colour_axis is not None
    )
    return stack_contrast_limits(_VolumeSlices(volume), layout)


def _inputs_overlap(spec: InputSpec, output: Path) -> bool:
    source = Path(spec.path).resolve()
    target = output.resolve()
    return target == source or source in target.parents or target in source.parents


def run_batch(
    command: str,
    arguments: list[str],
    operation: Any,
    options: BatchOptions,
    *,
    parameters: dict[str, Any],
    model: dict[str, Any],
    executor: Executor | None = None,
    stderr: TextIO | None = None,
) -> RunRecord:
    """Run ``operation`` on every slice of every input named by ``arguments``.

    Parameters
    ----------
    command
        Subcommand name, for the record.
    arguments
        Files, folders, globs and zarr arrays (see
        :func:`napari_segany.batch.inputs.discover_inputs`).
    operation
        One of :mod:`napari_segany.batch.operations` (picklable; runs on workers).
    options
        Output folder, axes, resume, executor.
    parameters, model
        For the run record.
    executor
        Use this executor (closed by the caller) instead of making one from ``options``.
    stderr
        Where progress and errors go (default ``sys.stderr``).

    Returns
    -------
    RunRecord
        Also written to ``OUT/napari-segany-run.json`` after every finished input.
    """
    stderr = stderr or sys.stderr
    out_dir = options.out_dir
    record_dir = out_dir if out_dir is not None else options.record_dir
    specs, missing = discover_inputs(arguments, recursive=options.recursive, exclude=out_dir)
    own_executor = executor is None
    if executor is None:
        executor = make_executor(
            workers=options.workers, threads=options.threads, scheduler=options.scheduler
        )
    record = RunRecord(command, parameters, model, executor.describe())
    previous = _previous_records(record_dir)
    from tqdm.auto import tqdm

    def report(message: str) -> None:
        tqdm.write(f"napari-segany {command}: {message}", file=stderr)

    for item in missing:
        record.inputs.append(
            InputRecord(item.argument, status="failed", error=f"{item.argument}: {item.reason}")
        )
        report(f"FAILED {item.argument}: {item.reason}")

    states: list[_ItemState] = []
    tasks: list[SliceTask | TileTask] = []
    for spec in specs:
        state = _plan_item(spec, operation, options, previous, tasks, len(states))
        states.append(state)
        record.inputs.append(state.record)
        if state.record.status == "failed":
            report(f"FAILED {state.record.error}")
    if record_dir is not None:
        record.write(record_dir)

    progress = tqdm(
        total=len(tasks) + sum(len(state.tiles) for state in states),  # tiles, then merges
        unit="task",
        file=stderr,
        disable=options.quiet,
        desc=command,
    )

    def write_record() -> None:
        if record_dir is not None:
            record.write(record_dir)

    def slice_finished(item: int, key: tuple[int, ...], result: Any) -> None:
        state = states[item]
        if isinstance(result, BaseException):
            state.errors.append(f"slice {key}: {_describe(result)}")
        else:
            _count(state, result)
        state.remaining -= 1
        if state.remaining:
            return
        if state.errors:
            _fail(state, "; ".join(state.errors[:3]), report)
            write_record()
        elif state.target is not None and (state.target.is_stack or state.target.kind == "zarr"):
            executor.submit(run_finish_task, FinishTask(item, state.target, state.max_label))
        else:
            state.record.status = "done"
            write_record()

    try:
        for task in tasks:
            executor.submit(run_tile_task if isinstance(task, TileTask) else run_slice_task, task)
        for task, result in executor.completed():
            state = states[task.item]
            if isinstance(task, FinishTask):
                if isinstance(result, BaseException):
                    _fail(state, f"writing {task.target.path}: {_describe(result)}", report)
                else:
                    state.record.status = "done"
                write_record()
                continue
            progress.update(1)
            if isinstance(task, TileTask):
                merge = state.tiles[task.key].add(task, result)
                if isinstance(merge, MergeTask):
                    executor.submit(run_merge_task, merge)
                elif merge is not None:  # every tile is in, some failed
                    slice_finished(task.item, task.key, merge)
                continue
            slice_finished(task.item, task.key, result)
        if tasks:
            _record_worker_facts(record, executor)
    finally:
        progress.close()
        if own_executor:
            executor.close()
    if out_dir is not None:
        _remove_empty_progress_folder(out_dir)
    record.finish()
    if record_dir is not None:
        record.write(record_dir)
    done = sum(r.status == "done" for r in record.inputs)
    skipped = sum(r.status == "skipped" for r in record.inputs)
    summary = f"{done} done, {skipped} skipped, {len(record.failed)} failed"
    if record_dir is not None:
        summary += f"; record: {record_dir / RUN_FILE_NAME}"
    if not options.quiet or record.failed:
        report(summary)
    return record


def _record_worker_facts(record: RunRecord, executor: Executor) -> None:
    """Model loads and peak memory per worker, where the executor can tell (informative only)."""
    for name, method in (
        ("model_loads_per_worker", "model_loads"),
        ("peak_memory_mb_per_worker", "peak_memory_mb"),
    ):
        function = getattr(executor, method, None)
        if callable(function):
            try:
                record.execution[name] = function()
            except Exception:  # a cluster going away must not fail a finished run
                pass


def _remove_empty_progress_folder(out_dir: Path) -> None:
    folder = out_dir / PROGRESS_FOLDER
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fail(state: _ItemState, message: str, report) -> None:
    state.record.status = "failed"
    state.record.error = f"{state.spec.label}: {message}"
    report(f"FAILED {state.record.error}")


def _count(state: _ItemState, result: SliceResult) -> None:
    state.record.objects = (state.record.objects or 0) + result.objects
    state.record.seconds = round(state.record.seconds + result.seconds, 3)
    state.max_label = max(state.max_label, result.max_label)


def _previous_records(out_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Per-input records of an earlier run into the same folder (for skipped inputs' counts)."""
    if out_dir is None or not (out_dir / RUN_FILE_NAME).is_file():
        return {}
    try:
        inputs = json.loads((out_dir / RUN_FILE_NAME).read_text()).get("inputs", [])
        return {r["input"]: r for r in inputs if isinstance(r, dict) and "input" in r}
    except (OSError, ValueError, AttributeError):
        return {}


def _plan_item(
    spec: InputSpec,
    operation: Any,
    options: BatchOptions,
    previous: dict[str, dict[str, Any]],
    tasks: list[SliceTask | TileTask],
    index: int,
) -> _ItemState:
    """Open one input, decide its output and its remaining slices, append their tasks."""
    record = InputRecord(spec.label)
    state = _ItemState(spec, record, None)
    try:
        volume = open_volume(spec, options.axes)
    except InputError as exc:
        record.status, record.error = "failed", str(exc)
        return state
    planned = len(tasks)
    try:
        _plan_opened_item(state, volume, operation, options, previous, tasks, index)
    except Exception as exc:  # unreadable data, unwritable output: this input only
        del tasks[planned:]
        state.tiles.clear()
        record.status = "failed"
        record.error = f"{spec.label}: {_describe(exc)}"
    finally:
        volume.close()
    return state


def _plan_opened_item(
    state: _ItemState,
    volume: ImageVolume,
    operation: Any,
    options: BatchOptions,
    previous: dict[str, dict[str, Any]],
    tasks: list[SliceTask | TileTask],
    index: int,
) -> None:
    """Output, resume state, contrast limits and tasks of one opened input (may raise)."""
    spec, record = state.spec, state.record
    record.slices = len(volume)
    target = None
    if options.out_dir is not None:
        target = plan_output(spec, options.out_dir, volume.label_shape, volume.layout.spatial_shape)
        record.output = str(target.path)
        if _inputs_overlap(spec, target.path):
            record.status = "failed"
            record.error = f"{spec.label}: the output {target.path} would overwrite the input"
            return
        if target.is_complete() and not options.overwrite:
            record.status = "skipped"
            earlier = previous.get(spec.label, {})
            record.objects = earlier.get("objects")
            return
        if options.overwrite:
            target.discard()
    state.target = target
    limits = options.contrast_limits
    if limits is None and options.stack_contrast:
        limits = stack_limits(volume)
    done: dict[tuple[int, ...], dict[str, Any]] = {}
    if target is not None and (target.is_stack or target.kind == "zarr"):
        # Slices of an interrupted run are reused only if made by the same model and settings.
        fingerprint = hashlib.blake2b(
            repr((operation, options.axes, limits)).encode(), digest_size=16
        ).hexdigest()
        chunks = volume.spatial_chunks if spec.kind == "zarr" else None
        target.prepare_store(chunks, fingerprint=fingerprint)
        done = target.done_slices()
    record.resumed_slices = len(done)
    for info in done.values():
        record.objects = (record.objects or 0) + int(info.get("objects", 0))
        state.max_label = max(state.max_label, int(info.get("max_label", 0)))
    keys = [k for k in volume.keys() if k not in done]
    shape = volume.layout.spatial_shape
    boxes = operation.tiles(shape) if hasattr(operation, "tiles") else []
    for key in keys:
        if not boxes:
            tasks.append(SliceTask(index, spec, options.axes, key, limits, target, operation))
            continue
        tile_limits = operation.tile_contrast_limits(_SliceView(volume, key), limits)
        state.tiles[key] = _TiledSlice(key, shape, len(boxes), target, operation)
        for box in boxes:
            tile = TileTask(index, spec, options.axes, key, tuple(box), tile_limits, operation)
            tasks.append(tile)
    state.remaining = len(keys)
    if not keys:
        if target is not None and (target.is_stack or target.kind == "zarr"):
            # Every slice finished earlier but the output was not finished: finish it now.
            target.finish(state.max_label)
        record.status = "done"
