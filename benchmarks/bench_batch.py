"""Benchmark the batch command line: one process vs a local dask cluster, and how cost grows.

Runs ``napari-segany everything`` (the real console entry, in a child process each time) on
folders of 4, 8 and 16 synthetic images with a random-weight SAM written once as a checkpoint:

- ``serial-1t``: one process, one torch thread (``--threads 1``);
- ``serial-2t``: one process, two torch threads (``--threads 2``: what a plain run gets here);
- ``workers-2``: ``--workers 2`` (a LocalCluster of two processes, one torch thread each);
- ``workers-2-trim`` (with ``--malloc-trim``): the same with ``MALLOC_TRIM_THRESHOLD_=65536``
  exported and ``NAPARI_SEGANY_MALLOC_TUNING=0``: the environment dask's nanny gives every worker,
  as it was before napari-segany dropped and replaced it (it turns off glibc's dynamic mmap
  threshold, so torch's big buffers are page-faulted afresh on every operator);
- ``workers-2-nanny`` (with ``--malloc-trim``): the nanny's value exported as it reaches the
  workers of a cluster napari-segany did not start (``--scheduler``), where the workers replace
  it (``napari_segany.models.allocator``); the before/after of those changes in one run.

The three are run interleaved (one of each per round, rounds repeated), so a load from other jobs
hits them alike; the ratios within a round are the numbers to trust. Printed per image count:
wall seconds (median over rounds), images per second, the ratios against ``serial-1t``, and
the peak resident memory of a worker process (from the run record). The fixed cost (process
start, cluster start, model load) is the intercept of time vs images; the per-image cost the
slope.

What a 2-core machine shows and does not: two workers can at best halve the time of one
single-threaded process (there are two cores); against one process with two torch threads the
gain is what process-level parallelism adds over intra-op threads (less synchronisation, the
prompt decoding and post-processing also in parallel). It says nothing about scaling beyond two
cores or across machines, where each worker brings its own cores and the per-task cost stays
the same; the cluster start (~1-2 s) and one model load per worker are paid once.

Examples::

    python benchmarks/bench_batch.py --quick
    python benchmarks/bench_batch.py --counts 4 8 16 --rounds 2 --arch sam-vit-b --input-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

CONFIGS = {
    "serial-1t": ["--threads", "1"],
    "serial-2t": ["--threads", "2"],
    "workers-2": ["--workers", "2", "--threads", "1"],
}
EXTRA_ENV = {
    "workers-2-trim": {"MALLOC_TRIM_THRESHOLD_": "65536", "NAPARI_SEGANY_MALLOC_TUNING": "0"},
    "workers-2-nanny": {"MALLOC_TRIM_THRESHOLD_": "65536"},
}


def write_random_sam(architecture_name: str, input_size: int, path: Path, seed: int = 0) -> None:
    """A SAM checkpoint (original key layout) of a registry architecture with random weights.

    ``input_size`` replaces the architecture's 1024-pixel model input (smaller: cheaper runs).

    Weights have sensible scales (default initialisation gives near-constant outputs); the
    mask and IoU heads are sharpened so that some masks pass the generator's filters.
    """
    import torch

    from napari_segany.sam.loader import build_sam
    from napari_segany.sam.registry import get_sam_variant

    architecture = replace(get_sam_variant(architecture_name).architecture, image_size=input_size)
    model = build_sam(architecture)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.05 * noise
            elif tensor.ndim >= 2 and name.endswith("weight") and "embed" not in name:
                value = noise / float(np.prod(tensor.shape[1:])) ** 0.5
            else:
                value = 0.1 * noise
            if "output_hypernetworks_mlps" in name and ".layers.2." in name:
                value = value * 100.0
            if "iou_prediction_head.layers.2." in name:
                value = value * 3.0 + (0.5 if name.endswith("bias") else 0.0)
            tensor.copy_(value)
    torch.save(model.state_dict(), path)


def write_images(folder: Path, count: int, size: int) -> None:
    """``count`` grayscale PNGs of ``size`` x ``size``: bright discs on a smooth background."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for index in range(count):
        rng = np.random.default_rng(index)
        image = 60 + 30 * np.sin(xx / 40 + index) * np.cos(yy / 55)
        for _ in range(25):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(8, size / 12)]
            image += 120 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"img{index}.png")


def run_once(config: str, images: Path, out: Path, model: Path, args) -> dict:
    """One ``napari-segany everything`` run in a child process; wall time and the run record."""
    command = [sys.executable, "-m", "napari_segany", "everything", str(images), "-o", str(out)]
    command += ["--model", str(model), "--precision", args.precision, "--device", "cpu", "-q"]
    command += ["--points-per-side", str(args.points_per_side), "--overwrite"]
    command += CONFIGS[config]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **EXTRA_ENV.get(config, {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    record = json.loads((out / "napari-segany-run.json").read_text())
    return {"wall": wall, "cpu": cpu, "record": record}


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="image side (pixels)")
    parser.add_argument("--arch", default="slimsam-77", help="registry architecture (random)")
    parser.add_argument("--input-size", type=int, default=512, help="model input (1024 released)")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--quick", action="store_true", help="counts 2 4, 256-px images")
    parser.add_argument(
        "--malloc-trim", action="store_true", help="also workers-2 with dask's malloc setting"
    )
    args = parser.parse_args()
    if args.malloc_trim:
        CONFIGS["workers-2-trim"] = CONFIGS["workers-2-nanny"] = CONFIGS["workers-2"]
    if args.quick:
        args.counts, args.size, args.input_size = [2, 4], 256, 256

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / f"random_{args.arch}.pth"
        write_random_sam(args.arch, args.input_size, model)
        print(
            f"model: random-weight {args.arch} at {args.input_size}-px input "
            f"({model.stat().st_size / 2**20:.0f} MiB), "
            f"{args.size}x{args.size} images, points_per_side={args.points_per_side}, "
            f"precision={args.precision}, {os.cpu_count()} CPUs (shared: other jobs may run)"
        )
        print(f"load average at start: {_load()}")
        results: dict[tuple[int, str], list[dict]] = {}
        for count in args.counts:
            images = tmp / f"images{count}"
            write_images(images, count, args.size)
            for round_ in range(args.rounds):
                order = list(CONFIGS) if round_ % 2 == 0 else list(reversed(CONFIGS))
                for config in order:
                    run = run_once(config, images, tmp / f"out-{count}-{config}", model, args)
                    results.setdefault((count, config), []).append(run)
                    print(
                        f"  {count:3d} images  {config:14s} {run['wall']:7.1f} s wall "
                        f"{run['cpu']:6.1f} s CPU",
                        flush=True,
                    )

        print(f"\nload average at end: {_load()} (above the CPU count: the machine was busy)")
        header = f"{'images':>6} {'config':14} {'wall s':>8} {'img/s':>7} {'vs serial-1t':>12}"
        print(header + f" {'peak RSS/worker MiB':>20} {'model loads':>12}")
        for count in args.counts:
            base = statistics.median(r["wall"] for r in results[(count, "serial-1t")])
            for config in CONFIGS:
                runs = results[(count, config)]
                wall = statistics.median(r["wall"] for r in runs)
                execution = runs[-1]["record"]["execution"]
                memory = execution.get("peak_memory_mb_per_worker", {})
                loads = execution.get("model_loads_per_worker", {})
                print(
                    f"{count:6d} {config:14} {wall:8.1f} {count / wall:7.2f} {base / wall:11.2f}x"
                    f" {max(memory.values(), default=0):20.0f} {sum(loads.values()):12d}"
                )
        if len(args.counts) >= 2:
            print("\nfixed cost (intercept) and per-image cost (slope) vs images, of the wall time")
            print("and of the CPU time of the command with its workers (less sensitive to load):")
            for config in CONFIGS:
                fits = []
                for measure in ("wall", "cpu"):
                    values = [
                        statistics.median(r[measure] for r in results[(c, config)])
                        for c in args.counts
                    ]
                    fits.append(np.polyfit(args.counts, values, 1))
                (wall_slope, wall_0), (cpu_slope, cpu_0) = fits
                print(
                    f"  {config:14s} wall {wall_0:6.1f} s + {wall_slope:5.2f} s/image   "
                    f"CPU {cpu_0:6.1f} s + {cpu_slope:5.2f} s/image"
                )


if __name__ == "__main__":
    main()
