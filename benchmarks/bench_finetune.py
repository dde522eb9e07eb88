"""Fine-tuning cost: seconds per training step and peak memory, for ViT-B and SlimSAM shapes.

Random weights (the registry architecture built with PyTorch's default initialisation), a
synthetic 1024 x 1024 image with 16 bright disks, nothing downloaded. Each configuration
(model, mode, objects per step) runs in its own process so the peak RSS is its own.

Reference, measured interleaved in the same process: the same step *without* the embedding cache,
i.e. the image encoder runs again for every step (inference mode, no encoder gradients) before
the identical decoder / LoRA step -- the cost a trainer pays when embeddings are not cached (and
a lower bound for micro-sam-style training, which also back-propagates through the encoder).

    python benchmarks/bench_finetune.py                     # both shapes, both modes, 8 and 16
    python benchmarks/bench_finetune.py --models sam-vit-b --modes decoder --objects 8
    python benchmarks/bench_finetune.py --end-to-end 10     # ViT-B, 10 tiles, 200 steps, timed
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

IMAGE_SIZE = 1024


def disk_image(seed: int, count: int = 16, size: int = IMAGE_SIZE):
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 30.0)
    labels = np.zeros((size, size), np.int32)
    rows, cols = np.mgrid[:size, :size]
    grid = int(np.ceil(np.sqrt(count)))
    cell = size // grid
    for value in range(1, count + 1):
        gy, gx = divmod(value - 1, grid)
        radius = rng.uniform(0.2, 0.4) * cell
        cy, cx = (gy + 0.5) * cell, (gx + 0.5) * cell
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 < radius**2
        image[disk] = 200.0
        labels[disk] = value
    image += rng.normal(0, 5, image.shape)
    return image, labels


def random_model(name: str, precision: str):
    from napari_segany.models.precision import resolve_dtype
    from napari_segany.sam import SAM_MODELS, build_sam

    torch.manual_seed(0)
    model = build_sam(SAM_MODELS[name].architecture, name=name)
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    dtype = resolve_dtype(precision, torch.device("cpu"))
    return model.to(dtype).eval().requires_grad_(False)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_config(
    name: str, mode: str, objects: int, repeats: int, precision: str, training_precision: str
) -> dict:
    """One configuration, in this process: step times (ours, reference) and peak RSS."""
    from napari_segany.sam import SamPredictor
    from napari_segany.training.prepared_tiles import prepare_tile
    from napari_segany.training.settings import FinetuneSettings
    from napari_segany.training.tiles import tiles_from_labels
    from napari_segany.training.trainer import FinetuneTrainer

    model = random_model(name, precision)
    image, labels = disk_image(0)
    (tile,) = tiles_from_labels(image, labels, tile_size=model.image_size)
    predictor = SamPredictor(model)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    prepared = prepare_tile(predictor, tile, rng, keep_tokens=mode == "lora")
    embed_s = time.perf_counter() - t0
    rss_after_embedding = peak_rss_mb()
    settings = FinetuneSettings(
        mode=mode, objects_per_step=objects, training_precision=training_precision
    )
    trainer = FinetuneTrainer(model, settings)
    kinds = ["box", "point", "correction"]

    def step(index: int) -> float:
        chosen = [prepared.objects[i] for i in rng.permutation(len(prepared.objects))[:objects]]
        start = time.perf_counter()
        parts = trainer.loss(prepared, chosen, kinds[index % 3], rng)
        trainer.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        trainer.optimizer.step()
        return time.perf_counter() - start

    def reference_step(index: int) -> float:
        start = time.perf_counter()
        predictor.set_image(tile.image)  # the encoder again, as without a cache
        return (time.perf_counter() - start) + step(index)

    for i in range(3):  # warm-up
        step(i)
    ours, reference = [], []
    for i in range(repeats):
        ours.append(step(i))
        if i < max(2, repeats // 5):  # the reference is slow: fewer samples, interleaved
            reference.append(reference_step(i))
    ours_s = statistics.median(ours)
    ref_s = statistics.median(reference)
    return {
        "model": name,
        "mode": mode,
        "objects": objects,
        "precision": precision,
        "training_forward": "bf16 autocast" if trainer.autocast_dtype else "fp32",
        "threads": torch.get_num_threads(),
        "embedding_s": round(embed_s, 3),
        "step_s": round(ours_s, 4),
        "reference_step_s": round(ref_s, 3),
        "ratio_ours_over_reference": round(ours_s / ref_s, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_embedding_mb": round(rss_after_embedding, 1),
    }


def end_to_end(tiles: int, steps: int, precision: str, training_precision: str) -> dict:
    """finetune_sam on ``tiles`` ViT-B tiles (one image each), ``steps`` steps, 2 held out."""
    from napari_segany.training import FinetuneSettings, finetune_sam

    model = random_model("sam-vit-b", precision)
    data = [disk_image(seed) for seed in range(tiles + 2)]
    start = time.perf_counter()
    result = finetune_sam(
        model,
        [d[0] for d in data[:tiles]],
        [d[1] for d in data[:tiles]],
        steps=steps,
        val_images=[d[0] for d in data[tiles:]],
        val_labels=[d[1] for d in data[tiles:]],
        settings=FinetuneSettings(patience=10_000, training_precision=training_precision),
    )
    total = time.perf_counter() - start
    return {
        "model": "sam-vit-b",
        "tiles": tiles,
        "steps": result.steps_done,
        "precision": precision,
        "training_precision": training_precision,
        "threads": torch.get_num_threads(),
        "total_s": round(total, 1),
        **{k: round(v, 2) for k, v in result.timings.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam-vit-b", "slimsam-50"])
    parser.add_argument("--modes", nargs="+", default=["decoder", "lora"])
    parser.add_argument("--objects", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--training-precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="TILES")
    parser.add_argument("--e2e-steps", type=int, default=200)
    parser.add_argument(
        "--one", nargs=3, metavar=("MODEL", "MODE", "OBJECTS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        name, mode, objects = args.one
        row = run_config(
            name, mode, int(objects), args.repeats, args.precision, args.training_precision
        )
        print(json.dumps(row))
        return
    if args.end_to_end:
        row = end_to_end(args.end_to_end, args.e2e_steps, args.precision, args.training_precision)
        print(json.dumps(row))
        return
    header = (
        f"{'model':<11} {'mode':<8} {'obj':>3} {'forward':<13} {'embed s':>8} {'step s':>8} "
        f"{'ref step s':>10} {'ours/ref':>8} {'peak RSS MB':>11}"
    )
    print(
        f"torch {torch.__version__}, model precision {args.precision}, training forward "
        f"{args.training_precision}, CPU, {args.threads or torch.get_num_threads()} thread(s)"
    )
    print(header)
    for name in args.models:
        for mode in args.modes:
            for objects in args.objects:
                command = [sys.executable, __file__, "--one", name, mode, str(objects)]
                command += ["--repeats", str(args.repeats), "--precision", args.precision]
                command += ["--training-precision", args.training_precision]
                if args.threads:
                    command += ["--threads", str(args.threads)]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{name:<11} {mode:<8} {objects:>3} {row['training_forward']:<13} "
                    f"{row['embedding_s']:>8.2f} "
                    f"{row['step_s']:>8.3f} {row['reference_step_s']:>10.2f} "
                    f"{row['ratio_ours_over_reference']:>8.3f} {row['peak_rss_mb']:>11.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
