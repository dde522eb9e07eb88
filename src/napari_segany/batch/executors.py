"""Running batch tasks: in this process, or on a dask.distributed cluster.

Both executors take ``function(task, resources)`` calls (:mod:`napari_segany.batch.tasks`) and
hand back ``(task, result_or_exception)`` pairs as tasks complete, in any order; tasks may be
submitted while earlier ones are being collected. The dask executor lives in
:mod:`napari_segany.batch.dask_runner` (dask is an optional dependency, the ``batch`` extra).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from napari_segany.batch.worker_resources import WorkerResources

__all__ = ["Executor", "SerialExecutor", "make_executor", "peak_rss_mb"]

TaskFunction = Callable[[Any, WorkerResources], Any]


class Executor(Protocol):
    """What the batch runner needs from an executor."""

    def submit(self, function: TaskFunction, task: Any) -> None: ...

    def completed(self) -> Iterator[tuple[Any, Any]]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs tasks one after the other in this process, with one :class:`WorkerResources`.

    Parameters
    ----------
    threads
        torch threads for the run (``torch.set_num_threads``, restored by :meth:`close`); None
        keeps torch's default.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.resources = WorkerResources()
        self._queue: deque[tuple[TaskFunction, Any]] = deque()
        self._previous_threads: int | None = None
        if threads is not None:
            import torch

            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)

    def submit(self, function: TaskFunction, task: Any) -> None:
        """Queue ``function(task, resources)``."""
        self._queue.append((function, task))

    def completed(self) -> Iterator[tuple[Any, Any]]:
        """Run the queued tasks in order; yield ``(task, result or exception)``."""
        while self._queue:
            function, task = self._queue.popleft()
            try:
                result = function(task, self.resources)
            except Exception as exc:  # reported per input by the runner
                result = exc
            yield task, result

    def describe(self) -> dict[str, Any]:
        """For the run record."""
        return {"executor": "single process", "threads": self.threads}

    def model_loads(self) -> dict[str, int]:
        """Model loads in this process."""
        return {"this process": self.resources.loads}

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of this process (MiB)."""
        return {"this process": peak_rss_mb()}

    def close(self) -> None:
        """Release models and files; restore torch's thread count."""
        self.resources.close()
        if self._previous_threads is not None:
            import torch

            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None


def peak_rss_mb() -> float:
    """Peak resident set size of the calling process in MiB (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def make_executor(
    *, workers: int | None = None, threads: int | None = None, scheduler: str | None = None
) -> Executor:
    """A :class:`SerialExecutor`, or a dask executor with ``workers`` or ``scheduler``."""
    if workers is None and scheduler is None:
        return SerialExecutor(threads)
    from napari_segany.batch.dask_runner import DaskExecutor

    return DaskExecutor(workers=workers, threads=threads, scheduler=scheduler)
