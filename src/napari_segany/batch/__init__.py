"""Batch processing without napari: many images, stacks and zarr volumes, on one machine or a cluster.

The ``napari-segany`` command line (:mod:`napari_segany.cli`) parses arguments and calls
:func:`run_batch` with an operation from :mod:`napari_segany.batch.operations`. The pieces:

- :mod:`~napari_segany.batch.inputs`: files, folders, globs and zarr arrays -> :class:`InputSpec`;
- :mod:`~napari_segany.batch.volumes`: lazy, slice-by-slice reading (TIFF, PNG/JPEG, zarr, OME-Zarr);
- :mod:`~napari_segany.batch.outputs`: label TIFFs and zarr arrays, per-slice resume markers;
- :mod:`~napari_segany.batch.tasks`: the per-slice task, a pure function of (task, resources);
- :mod:`~napari_segany.batch.executors` / :mod:`~napari_segany.batch.dask_runner`: this process
  or dask.distributed (a worker plugin holds each worker's loaded model);
- :mod:`~napari_segany.batch.run_record`: ``OUT/napari-segany-run.json``.

Importing this package imports neither torch, napari nor dask.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "AxisChoice",
    "BatchOptions",
    "InputSpec",
    "ModelSpec",
    "RunRecord",
    "SegGptPrompts",
    "SegmentEverything",
    "SegmentWithSegGpt",
    "discover_inputs",
    "open_volume",
    "run_batch",
]

_LAZY = {
    "AxisChoice": "volumes",
    "open_volume": "volumes",
    "BatchOptions": "runner",
    "run_batch": "runner",
    "InputSpec": "inputs",
    "discover_inputs": "inputs",
    "ModelSpec": "operations",
    "SegGptPrompts": "operations",
    "SegmentEverything": "operations",
    "SegmentWithSegGpt": "operations",
    "RunRecord": "run_record",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
