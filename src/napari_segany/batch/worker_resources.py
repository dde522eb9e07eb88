"""Heavy per-process state of batch tasks: loaded models and open inputs, held by one object.

A batch task is a pure function of (task, parameters) that needs a model: loading it per task
would cost more than the task. :class:`WorkerResources` is a small LRU owned by whoever runs the
tasks: the single-process runner creates one, and on a dask worker it lives in the worker plugin
:class:`napari_segany.batch.dask_runner.WorkerResourcesPlugin` (STYLE rule 16), so every worker
process loads each model once. Nothing here is module-level state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from napari_segany.batch.inputs import InputSpec
from napari_segany.batch.volumes import AxisChoice, ImageVolume, open_volume

__all__ = ["WorkerResources"]


class WorkerResources:
    """Loaded models and open input volumes of one process, least recently used dropped first.

    Parameters
    ----------
    max_models
        Models kept loaded (a batch run uses one; two lets ``seggpt`` and ``everything`` alternate).
    max_volumes
        Input files kept open (a TIFF stack re-parsed per slice would cost O(pages) each time).

    Attributes
    ----------
    loads
        How many times a model was loaded in this process (tests check it is once per worker).
    """

    def __init__(self, *, max_models: int = 2, max_volumes: int = 4) -> None:
        self.max_models = max_models
        self.max_volumes = max_volumes
        self.loads = 0
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        self._model_locks: dict[Hashable, threading.Lock] = {}
        self._volumes: OrderedDict[tuple[InputSpec, AxisChoice], ImageVolume] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def using_model(self, key: Hashable, load: Callable[[], Any]) -> Iterator[Any]:
        """Hold the model ``key`` (loaded by ``load()`` the first time) for one task.

        Tasks on the same model are serialised: predictors keep per-image state, so a worker with
        several threads runs them one after the other (give workers one thread each).
        """
        with self._lock:
            lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                model = self._models.get(key)
                if model is not None:
                    self._models.move_to_end(key)
            if model is None:
                model = load()
                with self._lock:
                    self.loads += 1
                    self._models[key] = model
                    while len(self._models) > self.max_models:
                        old, _ = self._models.popitem(last=False)
                        self._model_locks.pop(old, None)
            yield model

    def volume(self, spec: InputSpec, axes: AxisChoice) -> ImageVolume:
        """The input opened lazily (kept open for the next slice of the same input)."""
        key = (spec, axes)
        with self._lock:
            volume = self._volumes.get(key)
            if volume is not None:
                self._volumes.move_to_end(key)
                return volume
        volume = open_volume(spec, axes)
        with self._lock:
            self._volumes[key] = volume
            while len(self._volumes) > self.max_volumes:
                _, old = self._volumes.popitem(last=False)
                old.close()
        return volume

    def close(self) -> None:
        """Close open files and drop the models."""
        with self._lock:
            for volume in self._volumes.values():
                volume.close()
            self._volumes.clear()
            self._models.clear()
            self._model_locks.clear()
