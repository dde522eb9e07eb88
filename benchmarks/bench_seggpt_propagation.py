"""Benchmark: propagating one painted slice through a stack, pipeline overhead vs model time.

Runs :func:`napari_segany.seggpt.propagation.segment_stack_with_seggpt` on the sample blobs
stack (resized to ``--size``) with one painted slice, and splits the wall time into the
predictor's share (``set_prompts`` + prediction, i.e. the model with its pre/post-processing)
and the propagation pipeline's own overhead (reading and scaling slices, prompt choice, label
renumbering, merging), per target slice. Normal and video mode.

Models: ``--model`` takes any SegGPT source (registry name, hub id, folder, ``.pth``); by default
the tests' tiny random model (needs transformers), which makes the overhead visible;
``--random-vit-l`` builds the real ViT-L architecture with random weights (slow on a CPU).

Examples
--------
python benchmarks/bench_seggpt_propagation.py                          # tiny model, 64 x 512 x 512
python benchmarks/bench_seggpt_propagation.py --random-vit-l --slices 4 --size 256
python benchmarks/bench_seggpt_propagation.py --model seggpt-vit-l --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class TimedPredictor:
    """Forwards to a predictor and adds up the time spent inside it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0

    def set_prompts(self, *args, **kwargs):
        start = time.perf_counter()
        self.inner.set_prompts(*args, **kwargs)
        self.seconds += time.perf_counter() - start

    def iter_predictions(self, images, **kwargs):
        results = self.inner.iter_predictions(images, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                result = next(results)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield result


def make_model(args: argparse.Namespace):
    import torch

    from napari_segany.seggpt import SEGGPT_MODELS, load_seggpt

    if args.model:
        return load_seggpt(args.model, device=args.device, precision=args.precision)
    if args.random_vit_l:
        from napari_segany.checkpoints import build_with_weights
        from napari_segany.models.precision import resolve_device, resolve_dtype
        from napari_segany.models.seggpt import SegGpt, SegGptArchitecture

        arch = SegGptArchitecture.from_dict(SEGGPT_MODELS["seggpt-vit-l"].architecture)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in SegGpt(arch).state_dict().items()}
        generator = torch.Generator().manual_seed(0)
        state = {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}
        device = resolve_device(args.device)
        return build_with_weights(
            lambda: SegGpt(arch),
            state,
            device=device,
            dtype=resolve_dtype(args.precision, device),
            source="random ViT-L",
        )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures_seggpt import make_tiny_seggpt_reference

    with tempfile.TemporaryDirectory() as folder:
        make_tiny_seggpt_reference().save_pretrained(folder)
        return load_seggpt(folder, device=args.device, precision=args.precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="SegGPT source; default: the tests' tiny random model")
    parser.add_argument("--random-vit-l", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()

    import torch

    from napari_segany._napari.sample_data import blobs_stack
    from napari_segany.seggpt import SegGptPredictor
    from napari_segany.seggpt.propagation import PropagationSettings, segment_stack_with_seggpt

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = SegGptPredictor(make_model(args))
    image, truth = blobs_stack((args.slices, args.size, args.size))
    painted = np.zeros_like(truth)
    painted[0] = truth[0]
    targets = args.slices - 1
    print(
        f"{targets} target slices of {args.size} x {args.size}, model on "
        f"{predictor.model.device} in {predictor.model.dtype}, threads {torch.get_num_threads()}"
    )
    for video in (False, True):
        timed = TimedPredictor(predictor)
        start = time.perf_counter()
        segment_stack_with_seggpt(
            timed, image, painted, settings=PropagationSettings(use_previous_frame=video)
        )
        total = time.perf_counter() - start
        print(
            f"{'video ' if video else 'normal'} mode: {1000 * total / targets:8.1f} ms/slice total, "
            f"{1000 * timed.seconds / targets:8.1f} in the predictor, "
            f"{1000 * (total - timed.seconds) / targets:6.1f} pipeline overhead"
        )


if __name__ == "__main__":
    main()
