"""Benchmark "segment everything": this package vs the official segment_anything generator.

Both run the same random-weight SAM (weights written once, loaded by each side) on the same
synthetic image, with the same generator settings (the official defaults unless changed), each
in its own child process so that peak memory is measured per run. Printed per image size: wall
time and process CPU time (the fairer measure when other jobs share the CPU), both also for the
image embeddings alone, number of kept masks, whether both kept the same masks, peak resident
memory (and CUDA memory), and the speed ratios.

What is compared at 4096 x 4096: the official generator sees the image downscaled to the model's
1024-pixel input (one embedding) and upscales every mask logit to 4096 x 4096; "ours" with equal
settings does the same computation (same masks). "ours-tiled" (``--tiled``) is not an equal-settings
comparison: it segments at full resolution in 1024-pixel tiles (25 embeddings), which the
official generator cannot do.

Examples::

    python benchmarks/bench_automatic.py --quick
    python benchmarks/bench_automatic.py --sizes 1024 4096 --tiled
    python benchmarks/bench_automatic.py --device cuda --model sam-vit-h --precision bf16

Random weights give random-looking masks; thresholds are the official defaults, so the number of
kept masks is whatever random weights give (printed). Other helpers may load the CPU: compare
numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OFFICIAL_KIND = {"sam-vit-b": "vit_b", "sam-vit-l": "vit_l", "sam-vit-h": "vit_h"}


# -- shared between parent and workers ---------------------------------------------------------------
def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: smooth background with a few hundred bright and dark blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    image = np.empty((size, size, 3), dtype=np.float32)
    for c in range(3):
        image[..., c] = 60 + 40 * np.sin(6 * xx + c) * np.cos(4 * yy - c)
    n_blobs = int(300 * (size / 1024) ** 2)
    for _ in range(n_blobs):
        cy, cx = rng.integers(0, size, 2)
        radius = int(rng.integers(size // 200 + 3, size // 25 + 5))
        y0, y1, x0, x1 = (
            max(cy - radius, 0),
            min(cy + radius, size),
            max(cx - radius, 0),
            min(cx + radius, size),
        )
        disc = (np.arange(y0, y1)[:, None] - cy) ** 2 + (
            np.arange(x0, x1)[None, :] - cx
        ) ** 2 < radius**2
        image[y0:y1, x0:x1][disc] = rng.integers(0, 255, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def install_torchvision_stand_in() -> None:
    """The official package imports torchvision (not a dependency of this project); give it a
    stand-in with the same semantics for what it uses: PIL bilinear resize, stable-sort NMS."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is not None or "torchvision" in sys.modules:
        return
    import torch
    from PIL import Image

    from napari_segany.sam.box_nms import box_area, non_maximum_suppression

    def batched_nms(boxes, scores, idxs, iou_threshold):
        return non_maximum_suppression(boxes, scores, iou_threshold, idxs)

    def to_pil_image(array):
        return Image.fromarray(np.asarray(array))

    def resize(image, size, *args, **kwargs):
        return image.resize((size[1], size[0]), Image.BILINEAR)

    modules = {
        name: types.ModuleType(name)
        for name in (
            "torchvision",
            "torchvision.ops",
            "torchvision.ops.boxes",
            "torchvision.transforms",
            "torchvision.transforms.functional",
        )
    }
    modules["torchvision.ops.boxes"].batched_nms = batched_nms
    modules["torchvision.ops.boxes"].box_area = box_area
    modules["torchvision.transforms.functional"].resize = resize
    modules["torchvision.transforms.functional"].to_pil_image = to_pil_image
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    sys.modules.update(modules)
    del torch


def write_random_weights(model_name: str, path: Path, seed: int) -> None:
    """Random weights of a sensible scale (default inits give near-constant outputs).

    The last layers of the mask and IoU heads are scaled so that, as with trained weights, a
    fraction of the masks passes the default IoU (0.88) and stability (0.95) filters.
    """
    import torch

    from napari_segany.sam.loader import build_sam
    from napari_segany.sam.registry import get_sam_variant

    model = build_sam(get_sam_variant(model_name).architecture)
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
            elif "rel_pos" in name or "pos_embed" in name:
                value = 0.1 * noise
            elif (
                tensor.ndim >= 2
                and name.endswith("weight")
                and "embed" not in name
                and "token" not in name
            ):
                value = noise / float(np.prod(tensor.shape[1:])) ** 0.5
            else:
                value = noise
            if "output_hypernetworks_mlps" in name and ".layers.2." in name:
                value = value * 100.0  # sharp mask logits: stability scores near SAM's
            if "iou_prediction_head.layers.2." in name:
                value = value * 3.0 + (0.5 if name.endswith("bias") else 0.0)  # IoU spread
            tensor.copy_(value)
    torch.save(model.state_dict(), path)


# -- worker ----------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> dict:
    import torch

    warmup_seconds = None
    torch.manual_seed(0)
    device = torch.device(args.device)
    image = synthetic_image(args.size)
    settings = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch}
    if args.impl == "reference":
        install_torchvision_stand_in()
        from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
        from segment_anything import sam_model_registry

        model = sam_model_registry[OFFICIAL_KIND[args.model]]()
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        model = model.to(device).eval()
        generator = OfficialGenerator(model, **settings)
        predictor = generator.predictor
    else:
        from napari_segany.sam import load_sam
        from napari_segany.sam.automatic import SamAutomaticMaskGenerator

        model = load_sam(args.weights, device=str(device), precision=args.precision)
        tiling = {"tile_size": 1024, "tile_overlap": 256} if args.impl == "ours-tiled" else {}
        generator = SamAutomaticMaskGenerator(model, **settings, **tiling)
        predictor = generator.predictor
        if args.impl == "ours-compiled":
            model.compile_decoder()
            # Warm-up: one image compiles each batch shape (a full batch and the last one).
            start = time.perf_counter()
            generator.generate(image)
            warmup_seconds = time.perf_counter() - start

    embedding_seconds = [0.0, 0.0]  # wall, CPU
    set_image = predictor.set_image

    def timed_set_image(*a, **k):
        start, start_cpu = time.perf_counter(), time.process_time()
        set_image(*a, **k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        embedding_seconds[0] += time.perf_counter() - start
        embedding_seconds[1] += time.process_time() - start_cpu

    predictor.set_image = timed_set_image
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, start_cpu = time.perf_counter(), time.process_time()
    records = generator.generate(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "warmup_seconds": warmup_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "embedding_seconds": embedding_seconds[0],
        "embedding_cpu_seconds": embedding_seconds[1],
        "n_masks": len(records),
        "boxes": sorted(tuple(r["bbox"]) + (r["area"],) for r in records),
        "by_point": {json.dumps(r["point_coords"]): [r["bbox"], r["area"]] for r in records},
        "peak_rss_mb": peak_mb,
        "rss_increase_mb": max(0.0, peak_mb - baseline_mb),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
    }


# -- parent ----------------------------------------------------------------------------------------------
def run_child(args: argparse.Namespace, impl: str, size: int, weights: Path) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--impl",
        impl,
        "--size",
        str(size),
        "--weights",
        str(weights),
        "--model",
        args.model,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--points-per-side",
        str(args.points_per_side),
        "--points-per-batch",
        str(batch_size(args, impl, size)),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(f"{impl} at {size} failed:\n{done.stderr[-3000:]}\n")
    return None


def compare_masks(ref: dict, ours: dict) -> str:
    """Match kept masks by the prompt point that made them; how far boxes and areas differ."""
    common = set(ref["by_point"]) & set(ours["by_point"])
    if not common:
        return f"no mask from the same prompt point ({ref['n_masks']} vs {ours['n_masks']} kept)"
    box_diff = max(
        max(abs(a - b) for a, b in zip(ref["by_point"][k][0], ours["by_point"][k][0], strict=True))
        for k in common
    )
    area_diff = max(
        abs(ref["by_point"][k][1] - ours["by_point"][k][1]) / max(ref["by_point"][k][1], 1)
        for k in common
    )
    return (
        f"{len(common)} of {ref['n_masks']} reference masks kept by ours from the same point "
        f"({ours['n_masks']} kept); box corners differ by <= {box_diff} px, areas by <= {100 * area_diff:.2f}%"
    )


def batch_size(args: argparse.Namespace, impl: str, size: int) -> int:
    # The official generator holds (batch x 3) full-size float logits at once: 12.9 GB for a
    # batch of 64 at 4096 x 4096. Both sides use the same smaller batch there.
    if size > 2048 and args.device == "cpu":
        return min(args.points_per_batch, 16)
    return args.points_per_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sam-vit-b", choices=sorted(OFFICIAL_KIND))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="auto", help="ours: auto|fp32|bf16|fp16 (reference: fp32)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument(
        "--tiled", action="store_true", help="also run ours tiled at full resolution"
    )
    parser.add_argument(
        "--compile-decoder",
        action="store_true",
        help="also run ours with Sam.compile_decoder(): the first image (compiling) is timed "
        "apart, then the same image again",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the official generator")
    parser.add_argument("--quick", action="store_true", help="8 points per side (64 prompts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return
    if args.quick:
        args.points_per_side = 8

    import torch

    print(
        f"model {args.model} (random weights), device {args.device}, ours precision {args.precision}, "
        f"{args.points_per_side}x{args.points_per_side} points, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / f"{args.model}-random.pth"
        write_random_weights(args.model, weights, args.seed)
        impls = ([] if args.no_reference else ["reference"]) + ["ours"]
        impls += ["ours-compiled"] if args.compile_decoder else []
        header = (
            f"{'size':>6} {'impl':<11} {'time s':>8} {'embed s':>8} {'CPU s':>8} {'embed CPU':>9} "
            f"{'masks':>6} {'peak RSS MB':>12} {'+RSS MB':>8} {'CUDA MB':>8}"
        )
        print(header)
        for size in args.sizes:
            results = {}
            for impl in impls + (["ours-tiled"] if args.tiled and size > 1024 else []):
                result = run_child(args, impl, size, weights)
                if result is None:
                    continue
                results[impl] = result
                cuda = (
                    f"{result['cuda_peak_mb']:.0f}" if result["cuda_peak_mb"] is not None else "-"
                )
                print(
                    f"{size:>6} {impl:<11} {result['seconds']:>8.2f} {result['embedding_seconds']:>8.2f} "
                    f"{result['cpu_seconds']:>8.2f} {result['embedding_cpu_seconds']:>9.2f} {result['n_masks']:>6} {result['peak_rss_mb']:>12.0f} {result['rss_increase_mb']:>8.0f} {cuda:>8}",
                    flush=True,
                )
                if result["warmup_seconds"] is not None:
                    print(
                        f"{size:>6} {impl}: first image, compiling, {result['warmup_seconds']:.1f} s",
                        flush=True,
                    )
            if "ours-compiled" in results and "ours" in results:
                eager, comp = results["ours"], results["ours-compiled"]
                rest = (eager["seconds"] - eager["embedding_seconds"]) / max(
                    comp["seconds"] - comp["embedding_seconds"], 1e-9
                )
                print(
                    f"{size:>6} ratio ours/ours-compiled (wall time): "
                    f"{eager['seconds'] / comp['seconds']:.2f}x total, {rest:.2f}x excluding "
                    f"embeddings; same kept masks: {eager['boxes'] == comp['boxes']}",
                    flush=True,
                )
            if "reference" in results and "ours" in results:
                ref, ours = results["reference"], results["ours"]
                same = ref["boxes"] == ours["boxes"]
                for unit, total, embed in (
                    ("wall", "seconds", "embedding_seconds"),
                    ("CPU", "cpu_seconds", "embedding_cpu_seconds"),
                ):
                    rest = (ref[total] - ref[embed]) / max(ours[total] - ours[embed], 1e-9)
                    print(
                        f"{size:>6} ratio reference/ours ({unit} time): {ref[total] / ours[total]:.2f}x total, "
                        f"{rest:.2f}x excluding embeddings",
                        flush=True,
                    )
                print(
                    f"{size:>6} same kept masks (boxes and areas): {same}; {compare_masks(ref, ours)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
