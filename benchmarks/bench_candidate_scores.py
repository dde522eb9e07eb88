"""Time how segment everything scores one candidate mask: stability score and box.

Two ways, on the same low-resolution logits: the whole full-size map (upscale, two threshold
counts, boolean box), as the official generator does, and this package's windowed scoring
(``PointPromptDecoder._window_scores``: the full-size logits only inside the window where they can
pass the lowest threshold, in bands). Both give the same score and box (checked here). A compact
object (40 x 40 of the 256 x 256 low-resolution logits) and one spread over the whole image
(random logits, the worst case for the window) on square images of each size. No weights are
needed: the model has random weights and only its geometry is used.

    python benchmarks/bench_candidate_scores.py
    python benchmarks/bench_candidate_scores.py --sizes 1024 4096 12000 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_segany.models.allocator import keep_scratch_memory
from napari_segany.sam import SAM_MODELS, SamEmbedding, build_sam, transforms
from napari_segany.sam.box_nms import masks_to_boxes
from napari_segany.sam.mask_records import stability_score
from napari_segany.sam.point_decoding import PointPromptDecoder
from napari_segany.sam.predictor import model_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 12000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    keep_scratch_memory()
    model = build_sam(SAM_MODELS["slimsam-77"].architecture).eval()
    decoder = PointPromptDecoder(model)
    predictor = decoder.predictor
    side = model.low_res_mask_size[0]
    compact = torch.full((side, side), -8.0)
    compact[100:140, 90:130] = 6.0
    spread = torch.randn(side, side, generator=torch.Generator().manual_seed(0)) * 3
    features = torch.zeros(1, 256, 64, 64)
    for size in args.sizes:
        shape = (size, size)
        input_size = transforms.model_input_size(shape, model.image_size, "longest_side")
        predictor.set_embedding_state(
            SamEmbedding(features, shape, input_size, model_identity(model))
        )
        for name, logits in (("compact", compact), ("spread", spread)):

            def whole(logits=logits, shape=shape):
                full = decoder._upscale(logits[None], shape)
                return stability_score(full, 0.0, 1.0)[0], masks_to_boxes(full > 0.0)[0]

            def windowed(logits=logits):
                return decoder._window_scores(logits, 0.0, 1.0)

            times = {}
            results = {}
            for label, score in (("whole map", whole), ("windowed", windowed)):
                score()
                runs = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    results[label] = score()
                    runs.append(time.perf_counter() - start)
                times[label] = statistics.median(runs)
            same = all(
                torch.equal(a, b)
                for a, b in zip(results["whole map"], results["windowed"], strict=True)
            )
            print(
                f"{size:6d}² {name:8s} whole map {times['whole map'] * 1e3:8.2f} ms   windowed "
                f"{times['windowed'] * 1e3:7.2f} ms   {times['whole map'] / times['windowed']:6.1f}x"
                f"   same score and box: {same}"
            )


if __name__ == "__main__":
    main()
