"""Batch tasks on dask.distributed: a local cluster of processes, or an existing scheduler.

Each worker process gets a :class:`WorkerResourcesPlugin` holding its own
:class:`~napari_segany.batch.worker_resources.WorkerResources`, so it loads a model once and
keeps it for every later task (STYLE rule 16: the state lives in the plugin, not in a global).
Tasks are submitted as ``run_with_worker_resources(function, task)``; they write their outputs
themselves and send back only small results.

Needs the ``batch`` extra (``dask[distributed]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dask.config
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from napari_segany.batch.worker_resources import WorkerResources
from napari_segany.models.allocator import keep_scratch_memory

__all__ = ["PLUGIN_NAME", "DaskExecutor", "WorkerResourcesPlugin", "run_with_worker_resources"]

PLUGIN_NAME = "napari-segany-resources"

# dask's nanny starts every worker process with MALLOC_TRIM_THRESHOLD_=65536 (its
# ``distributed.nanny.pre-spawn-environ``). Setting any glibc malloc threshold turns off glibc's
# dynamic mmap threshold, so each of torch's large temporary buffers is mmapped, page-faulted and
# unmapped again on every operator: measured here, SAM automatic segmentation ran 1.8-2.2x slower
# per image in such a process (3.7x the page faults, 3x the system time), which cancelled the
# gain of two workers on two cores. Our local cluster's workers start without it (a value the
# user exports is still passed on), and every worker, on any cluster, sets glibc's thresholds
# when our plugin is set up (napari_segany.models.allocator): dask's value is replaced there, a
# user's other value kept.
_LOCAL_WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class WorkerResourcesPlugin(WorkerPlugin):
    """Gives each dask worker its own :class:`WorkerResources` and torch thread count.

    Parameters
    ----------
    torch_threads
        ``torch.set_num_threads`` on the worker; None keeps the worker's default.
    """

    name = PLUGIN_NAME

    def __init__(self, torch_threads: int | None = 1) -> None:
        self.torch_threads = torch_threads
        self.resources: WorkerResources | None = None
        self.malloc: str | None = None  # what keep_scratch_memory() did in this worker

    def setup(self, worker: Any) -> None:
        # Before any model loads: on a cluster we did not start (``--scheduler``) the nanny's
        # MALLOC_TRIM_THRESHOLD_ is still there, and is replaced.
        self.malloc = keep_scratch_memory(dask_worker=True)
        self.resources = WorkerResources()
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        if self.resources is not None:
            self.resources.close()
            self.resources = None


def run_with_worker_resources(function: Any, task: Any) -> Any:
    """Run ``function(task, resources)`` on a dask worker with that worker's resources."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    if plugin.resources is None:  # a worker that joined without setup (should not happen)
        plugin.setup(get_worker())
    return function(task, plugin.resources)


def worker_model_loads(client: Client) -> dict[str, int]:
    """How many times each worker loaded a model (for tests and the run record)."""

    def loads(dask_worker: Any) -> int:
        plugin = dask_worker.plugins.get(PLUGIN_NAME)
        return 0 if plugin is None or plugin.resources is None else plugin.resources.loads

    return client.run(loads)


class DaskExecutor:
    """Runs batch tasks on dask.distributed.

    Parameters
    ----------
    workers
        Start a ``LocalCluster`` of this many worker processes, one dask thread each.
    threads
        torch threads per worker (default 1, so N workers use N cores).
    scheduler
        Address of an existing scheduler (``tcp://host:8786``, from dask-jobqueue, ...)
        instead of a local cluster.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        threads: int | None = None,
        scheduler: str | None = None,
    ) -> None:
        torch_threads = threads if threads is not None else 1
        self.scheduler = scheduler
        self.workers = workers
        self.threads = torch_threads
        self._cluster = None
        if scheduler is not None:
            self.client = Client(scheduler)
        else:
            if workers is None or workers < 1:
                raise ValueError(f"workers must be at least 1, got {workers}")
            env = {k: str(torch_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            with dask.config.set(_LOCAL_WORKER_ENVIRON):
                self._cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # task errors are reported per input
                    env=env,
                )
            self.client = Client(self._cluster)
        self.client.register_plugin(WorkerResourcesPlugin(torch_threads))
        self._pending: dict[str, Any] = {}
        self._as_completed = as_completed()

    def submit(self, function: Any, task: Any) -> None:
        """Submit ``function(task, resources)`` to the cluster."""
        future = self.client.submit(run_with_worker_resources, function, task, pure=False)
        self._pending[future.key] = task
        self._as_completed.add(future)

    def completed(self) -> Iterator[tuple[Any, Any]]:
        """Yield ``(task, result or exception)`` as tasks finish, in completion order."""
        for future in self._as_completed:
            task = self._pending.pop(future.key)
            exception = future.exception()
            yield task, (exception if exception is not None else future.result())
            future.release()

    def model_loads(self) -> dict[str, int]:
        """Model loads per worker address."""
        return worker_model_loads(self.client)

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of each worker process (MiB)."""
        from napari_segany.batch.executors import peak_rss_mb

        return self.client.run(peak_rss_mb)

    def describe(self) -> dict[str, Any]:
        """For the run record."""
        info = self.client.scheduler_info()
        return {
            "executor": "dask.distributed",
            "scheduler": self.scheduler or "local cluster",
            "workers": len(info.get("workers", {})),
            "torch_threads_per_worker": self.threads,
        }

    def close(self) -> None:
        """Close the client (and the local cluster it started)."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
