"""Time SAM image embedding and one prompt -> mask call, against transformers on the same weights.

Both models get the same random weights (a transformers ``SamModel`` is built from the registry
architecture, and its state dict is loaded into this package's model), so the comparison is of
implementations, not checkpoints. Nothing is downloaded.

    python benchmarks/bench_sam.py                         # ViT-B, CPU, precision auto
    python benchmarks/bench_sam.py --model sam-vit-h --device cuda --precision bf16 --repeats 20

"prompt -> mask" is one foreground click on a 1024 x 1024 image: prompt encoder, mask decoder and
upscaling of the 3 multimask logits to full-size boolean masks (``SamPredictor.predict``); for
transformers the same decoder call plus the upscaling its processor does (bilinear to the model
input, crop, bilinear to the image size, threshold).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_segany.checkpoints import build_with_weights
from napari_segany.models.precision import resolve_device, resolve_dtype
from napari_segany.sam import SAM_MODELS, SamPredictor, build_sam
from napari_segany.sam.checkpoint_layouts import rename_transformers_keys
from napari_segany.sam.registry import SamArchitecture

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def transformers_config(arch: SamArchitecture):
    from transformers import SamConfig

    return SamConfig(
        vision_config={
            "hidden_size": arch.encoder_embed_dim,
            "num_hidden_layers": arch.encoder_depth,
            "num_attention_heads": arch.encoder_num_heads,
            "mlp_dim": arch.encoder_mlp_dim,
            "global_attn_indexes": list(arch.encoder_global_attn_indexes),
            "window_size": arch.encoder_window_size,
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "output_channels": arch.prompt_embed_dim,
            "num_pos_feats": arch.prompt_embed_dim // 2,
        },
    )


def randomize(model: torch.nn.Module) -> None:
    """Random weights of a realistic scale (transformers' SAM init is ~1e-10 for the encoder)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim >= 2 and "embed" not in name and "token" not in name:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_(0.05 * noise)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:9.1f} ms  (min {min(times) * 1e3:.1f}, n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sam-vit-b", choices=list(SAM_MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="auto", help="auto, fp32, bf16 or fp16 (this implementation)"
    )
    parser.add_argument(
        "--reference-precisions",
        default="fp32,same",
        help="precisions of the transformers runs, comma separated ('same' = --precision; '' = skip)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed embedding runs per implementation"
    )
    parser.add_argument("--decoder-repeats", type=int, default=20, help="timed prompt -> mask runs")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch default)"
    )
    args = parser.parse_args()

    start_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    variant = SAM_MODELS[args.model]
    arch = variant.architecture
    print(
        f"{args.model} on {device} ({torch.get_num_threads()} CPU threads), this implementation in {DTYPE_NAMES[dtype]}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")

    from transformers import SamModel

    torch.manual_seed(0)
    reference = SamModel(transformers_config(arch)).eval()
    randomize(reference)
    state = rename_transformers_keys(reference.state_dict())
    ours = build_with_weights(
        lambda: build_sam(arch, name=args.model), state, device=device, dtype=dtype
    )

    size = arch.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    ref_precisions = [p.strip() for p in args.reference_precisions.split(",") if p.strip()]
    ref_dtypes: list[torch.dtype] = []
    for p in ref_precisions:
        ref_dtype = dtype if p == "same" else resolve_dtype(p, device)
        if ref_dtype not in ref_dtypes:
            ref_dtypes.append(ref_dtype)
    references = {}
    for ref_dtype in ref_dtypes:  # one copy per precision, so runs can alternate
        copy = (
            reference if ref_dtype == ref_dtypes[-1] else SamModel(transformers_config(arch)).eval()
        )
        if copy is not reference:
            copy.load_state_dict(reference.state_dict())
        references[ref_dtype] = copy.to(device=device, dtype=ref_dtype)

    # Runs alternate (this, transformers fp32, transformers bf16, this, ...) so that changes in
    # the load of a shared machine hit every implementation alike.
    ref_pixels = {d: pixels.to(d) for d in ref_dtypes}
    runs: dict[str, list[float]] = {"this": []}
    runs.update({f"transformers {DTYPE_NAMES[d]}": [] for d in ref_dtypes})
    with torch.inference_mode():
        ours.embed_image(pixels)
        for ref_dtype, model in references.items():
            model.get_image_embeddings(pixels.to(ref_dtype))
        for _ in range(args.repeats):
            runs["this"] += timed(lambda: ours.embed_image(pixels), device, 1, 0)
            for ref_dtype, model in references.items():
                runs[f"transformers {DTYPE_NAMES[ref_dtype]}"] += timed(
                    lambda m=model, x=ref_pixels[ref_dtype]: m.get_image_embeddings(x), device, 1, 0
                )
        for name, times in runs.items():
            print(
                f"embedding  {name + ' (' + DTYPE_NAMES[dtype] + ')' if name == 'this' else name:22s}: {summary(times)}"
            )
        if dtype in references:
            reference_embedding = references[dtype].get_image_embeddings(pixels.to(dtype)).float()
            diff = (ours.embed_image(pixels).float() - reference_embedding).abs().max().item()
            scale = reference_embedding.abs().max().item()
            print(
                f"max |difference| of the embeddings at {DTYPE_NAMES[dtype]}: {diff:.3g} (max |value| {scale:.3g})"
            )
    for name, times in runs.items():
        if name != "this":
            paired = statistics.median(a / b for a, b in zip(runs["this"], times, strict=True))
            ratio = statistics.median(runs["this"]) / statistics.median(times)
            print(
                f"ratio this / {name}: {ratio:.3f} (medians), {paired:.3f} (median of paired runs)"
            )

    # prompt -> mask on a full-size image
    predictor = SamPredictor(ours)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        features = ours.embed_image(pixels)
    predictor.set_embedding_state(_state(predictor, features, (size, size)))
    point = np.array([[size * 0.4, size * 0.6]])
    label = np.array([1])
    t_pred = timed(
        lambda: predictor.predict(point_coords=point, point_labels=label),
        device,
        args.decoder_repeats,
        3,
    )
    print(
        f"prompt->mask this ({DTYPE_NAMES[dtype]}):        {summary(t_pred)}  -> masks {image.shape[:2]}"
    )

    if ref_dtypes:
        ref_dtype = ref_dtypes[-1]
        reference = references[ref_dtype]
        ref_features = features.to(ref_dtype)
        points = torch.tensor([[[[size * 0.4, size * 0.6]]]], device=device)
        labels = torch.ones(1, 1, 1, dtype=torch.int64, device=device)

        def reference_predict():
            out = reference(image_embeddings=ref_features, input_points=points, input_labels=labels)
            masks = F.interpolate(
                out.pred_masks[0].float(), (size, size), mode="bilinear", align_corners=False
            )
            return (masks > 0).cpu().numpy(), out.iou_scores.float().cpu().numpy()

        with torch.inference_mode():
            t_ref_pred = timed(reference_predict, device, args.decoder_repeats, 3)
        print(f"prompt->mask transformers ({DTYPE_NAMES[ref_dtype]}): {summary(t_ref_pred)}")
        print(
            f"ratio prompt->mask this / transformers: {statistics.median(t_pred) / statistics.median(t_ref_pred):.3f}"
        )
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average now: {load} on {cores} cores (at start: {start_load})")
        print(
            "note: CPU timings depend on other processes sharing the cores; with a load above the "
            "core count, multi-threaded (OpenMP) runs of both implementations slow down erratically: "
            "compare runs from one invocation, or use --threads 1"
        )


def _state(predictor: SamPredictor, features: torch.Tensor, size: tuple[int, int]):
    from napari_segany.sam import SamEmbedding
    from napari_segany.sam.predictor import model_identity

    return SamEmbedding(features, size, size, model_identity(predictor.model))


if __name__ == "__main__":
    main()
