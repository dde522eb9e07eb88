"""Benchmark: one Grounding DINO tiny forward on an 800 × 1066 input, ours vs transformers.

Both models hold the same random weights with the true tiny architecture (Swin-T backbone,
BERT-base text encoder, 6 + 6 layers, 900 queries); the weights travel through
``save_pretrained`` and this package's loader, so the real loading path is used. The script
times transformers' ``GroundingDinoForObjectDetection`` in float32 and ours in the default
precision ("auto": bfloat16 on CPUs with native bfloat16) and in float32, interleaved in the same
run (the machine may be shared: compare the ratios, not the absolute times), and prints the
ratios ours / transformers.

Examples
--------
python benchmarks/bench_grounding.py                 # CPU, 2 rounds
python benchmarks/bench_grounding.py --rounds 3 --threads 4
python benchmarks/bench_grounding.py --device cuda --rounds 5    # GPU: ours bf16 vs transformers fp32
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from napari_segany.grounding import load_grounding_dino

HEIGHT, WIDTH = 800, 1066
# "[CLS] nucleus . mitochondrion . cell membrane . [SEP]" in bert-base-uncased ids.
INPUT_IDS = [101, 13578, 1012, 16233, 1012, 3526, 10804, 1012, 102]


def make_reference(seed: int = 0):
    """transformers' Grounding DINO tiny (default config) with random weights, float32, eval."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    with (
        torch.no_grad()
    ):  # the reference init zeroes the box heads; make every output depend on weights
        for name, param in model.named_parameters():
            if "bbox_embed" in name and param.ndim == 2:
                param.normal_(0, 0.02)
    return model


def write_folder(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 30522)]
    for index, token in {
        100: "[UNK]",
        101: "[CLS]",
        102: "[SEP]",
        103: "[MASK]",
        1012: ".",
        1029: "?",
    }.items():
        tokens[index] = token
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall time and process CPU time of one call, seconds (CPU time is steadier when shared)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(HEIGHT, WIDTH), metavar=("H", "W"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    reference = make_reference()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(reference, Path(tmp))
        ours_default = load_grounding_dino(folder, device=device)
        ours_fp32 = load_grounding_dino(folder, device=device, precision="fp32")
    reference = reference.to(device)
    height, width = args.size
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    ids = torch.tensor([INPUT_IDS], device=device)

    runs = {
        "transformers fp32": lambda: reference(pixel_values=pixels, input_ids=ids),
        f"ours {str(ours_default.dtype).removeprefix('torch.')} (default)": lambda: (
            ours_default.model(pixels, ids)
        ),
        "ours fp32": lambda: ours_fp32.model(pixels, ids),
    }
    with torch.inference_mode():  # warm-up and a check that the outputs agree
        ref_out = reference(pixel_values=pixels, input_ids=ids)
        fp32_out = ours_fp32.model(pixels, ids)
        ours_default.model(pixels, ids)
    finite = torch.isfinite(ref_out.logits)
    logit_diff = (ref_out.logits[finite] - fp32_out.logits[finite]).abs().max().item()
    box_diff = (ref_out.pred_boxes - fp32_out.boxes).abs().max().item()

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():  # interleaved: each round times every model once
            times[name].append(timed(fn, device))
    best_wall = {name: min(t[0] for t in values) for name, values in times.items()}
    best_cpu = {name: min(t[1] for t in values) for name, values in times.items()}
    base_wall, base_cpu = best_wall["transformers fp32"], best_cpu["transformers fp32"]
    print(
        f"Grounding DINO tiny, {height}x{width} input, {len(INPUT_IDS)} text tokens, 900 queries; "
        f"torch {torch.__version__}, {device}, {args.threads} thread(s), {args.rounds} rounds, "
        f"interleaved"
    )
    print(
        f"ours fp32 vs transformers fp32: max |logit diff| {logit_diff:.2e}, "
        f"max |box diff| {box_diff:.2e}"
    )
    for name in runs:
        runs_text = ", ".join(f"{w:.1f}/{c:.1f}" for w, c in times[name])
        print(
            f"{name:28s} wall {best_wall[name]:7.2f} s (ratio {best_wall[name] / base_wall:.2f}x)  "
            f"CPU {best_cpu[name]:7.2f} s (ratio {best_cpu[name] / base_cpu:.2f}x)  "
            f"[wall/CPU per run: {runs_text}]"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
