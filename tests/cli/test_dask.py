"""Scale-out: ``--workers 2`` (a dask LocalCluster of processes) gives the single-process labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segany.cli import main
from tests.cli.batch_data import EVERYTHING_FAST

pytest.importorskip("distributed")


@pytest.mark.slow
def test_two_workers_give_the_single_process_labels(
    tiny_sam_hf_folder, image_folder, zarr_stack, tmp_path
):
    import tifffile
    import zarr

    path, _ = zarr_stack
    inputs = [str(image_folder), str(path)]
    # Tiles of 64: a.png and b.tif become tile tasks merged by a reduce task, the rest slices.
    tiles = ["--tile-size", "64", "--tile-overlap", "16"]
    common = ["--model", str(tiny_sam_hf_folder)] + tiles + EVERYTHING_FAST
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert main(["everything", *inputs, "-o", str(single), "--threads", "1"] + common) == 0
    assert main(["everything", *inputs, "-o", str(parallel), "--workers", "2"] + common) == 0

    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(
            tifffile.imread(parallel / f"{name}_labels.tif"),
            tifffile.imread(single / f"{name}_labels.tif"),
        )
    written = zarr.open_array(parallel / "volume_labels.zarr", mode="r")
    assert written.chunks == (1, 24, 56) and written.attrs["napari_segany_complete"]
    np.testing.assert_array_equal(
        written[:], zarr.open_array(single / "volume_labels.zarr", mode="r")[:]
    )

    record = json.loads((parallel / "napari-segany-run.json").read_text())
    assert record["execution"]["executor"] == "dask.distributed"
    assert record["execution"]["workers"] == 2
    loads = record["execution"]["model_loads_per_worker"]
    # Many tasks on two workers: each worker loaded the model at most once.
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1
    memory = record["execution"]["peak_memory_mb_per_worker"]
    assert set(memory) == set(loads) and all(mb > 0 for mb in memory.values())
    single_record = json.loads((single / "napari-segany-run.json").read_text())
    assert [r["objects"] for r in record["inputs"]] == [
        r["objects"] for r in single_record["inputs"]
    ]


@pytest.mark.slow
def test_an_existing_scheduler_is_used_and_left_running(tiny_sam_hf_folder, image_folder, tmp_path):
    import tifffile
    import torch
    from distributed import Client, LocalCluster

    threads = torch.get_num_threads()
    common = ["--model", str(tiny_sam_hf_folder)] + EVERYTHING_FAST
    single = tmp_path / "single"
    assert main(["everything", str(image_folder / "a.png"), "-o", str(single)] + common) == 0
    out = tmp_path / "out"
    try:
        with LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster:
            code = main(
                ["everything", str(image_folder / "a.png"), "-o", str(out)]
                + ["--scheduler", cluster.scheduler_address]
                + common
            )
            assert code == 0
            with Client(cluster) as client:  # still up after the command closed its client
                assert len(client.scheduler_info()["workers"]) == 1
    finally:
        torch.set_num_threads(threads)  # the in-process worker's plugin set it to 1
    record = json.loads((out / "napari-segany-run.json").read_text())
    assert record["execution"]["scheduler"] == cluster.scheduler_address
    np.testing.assert_array_equal(
        tifffile.imread(out / "a_labels.tif"), tifffile.imread(single / "a_labels.tif")
    )


@pytest.mark.slow
def test_local_workers_start_without_dask_malloc_trim_threshold(monkeypatch):
    """dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 for its workers, which turns off glibc's
    dynamic mmap threshold: torch's large buffers are then page-faulted afresh on every operator
    (SAM ran ~2x slower per image in such a worker). Our local workers start without it."""
    import os

    from napari_segany.batch.dask_runner import DaskExecutor

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    executor = DaskExecutor(workers=1)
    try:
        seen = executor.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    finally:
        executor.close()
    assert list(seen.values()) == [None]
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor put into this process's environment


@pytest.mark.slow
def test_workers_replace_dask_nannys_malloc_setting_on_any_cluster():
    """A cluster we did not start (``--scheduler``) gives its workers dask's
    MALLOC_TRIM_THRESHOLD_=65536; our plugin's setup sets glibc's thresholds anyway."""
    import os

    import dask.config
    from distributed import Client, LocalCluster

    from napari_segany.batch.dask_runner import PLUGIN_NAME, WorkerResourcesPlugin

    nanny_default = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}
    with dask.config.set(nanny_default):  # dask's default, given here in case it changes
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        )
    try:
        with Client(cluster) as client:
            client.register_plugin(WorkerResourcesPlugin(None))
            seen = client.run(
                lambda dask_worker: (
                    os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                    dask_worker.plugins[PLUGIN_NAME].malloc,
                )
            )
    finally:
        cluster.close()
    assert list(seen.values()) == [("65536", "set")]
