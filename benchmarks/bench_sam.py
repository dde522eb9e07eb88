"""Time SAM image embedding and one prompt -> mask call, against transformers on the same weights.

Both models get the same random weights (a transformers ``SamModel`` is built from the registry
architecture, and its state dict is loaded into this package's model), so the comparison is of
implementations, not checkpoints. Nothing is downloaded.

    python benchmarks/bench_sam.py                         # ViT-B, CPU, precision auto
    python benchmarks/bench_sam.py --model slimsam-77 --profile   # + per-op tables (torch.profiler)
    python benchmarks/bench_sam.py --model sam-vit-h --device cuda --precision bf16 --repeats 20

``--profile`` prints, after the timings, the per-operator self-time table of one embedding of
each implementation (this one and transformers at the same precision). ``--compile`` also times
``torch.compile`` of this image encoder: the warm-up (first call) and the steady state.

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


def timed(
    fn, device: torch.device, repeats: int, warmup: int = 1, cpu_times: list[float] | None = None
) -> list[float]:
    """Wall seconds of ``repeats`` calls; the process CPU seconds of each go to ``cpu_times``."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - start_cpu)
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
    parser.add_argument(
        "--profile", action="store_true", help="print per-op tables of one embedding each"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the image encoder"
    )
    parser.add_argument(
        "--skip-decoder", action="store_true", help="time the embedding only (no prompt -> mask)"
    )
    parser.add_argument(
        "--compile-decoder",
        action="store_true",
        help="also time prompt -> mask with Sam.compile_decoder() (CUDA graphs on a GPU, "
        "inductor with frozen weights on the CPU)",
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
    cpu_runs: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        ours.embed_image(pixels)
        for ref_dtype, model in references.items():
            model.get_image_embeddings(pixels.to(ref_dtype))
        for _ in range(args.repeats):
            runs["this"] += timed(lambda: ours.embed_image(pixels), device, 1, 0, cpu_runs["this"])
            for ref_dtype, model in references.items():
                name = f"transformers {DTYPE_NAMES[ref_dtype]}"
                runs[name] += timed(
                    lambda m=model, x=ref_pixels[ref_dtype]: m.get_image_embeddings(x),
                    device,
                    1,
                    0,
                    cpu_runs[name],
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
            if device.type == "cpu":
                cpu_ratio = statistics.median(cpu_runs["this"]) / statistics.median(cpu_runs[name])
                print(
                    f"ratio this / {name} in process CPU time: {cpu_ratio:.3f} (medians; "
                    f"{statistics.median(cpu_runs['this']):.2f} s vs "
                    f"{statistics.median(cpu_runs[name]):.2f} s)"
                )
    if args.compile:
        _time_compiled(ours, pixels, device, args.repeats, references.get(dtype))
    if args.profile:
        _print_profiles(ours, pixels, references.get(dtype), dtype)
    if args.skip_decoder:
        return

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

    def shown_mask():
        """What the widget does per click: decode low-res, upscale only the best candidate
        within its bounding window."""
        _, scores, low_res = predictor.predict(
            point_coords=point, point_labels=label, return_low_res_only=True
        )
        return predictor.upscale_mask(low_res, int(np.argmax(scores)), crop=True)

    t_shown = None
    if "return_low_res_only" in SamPredictor.predict.__code__.co_varnames:
        t_shown = timed(shown_mask, device, args.decoder_repeats, 3)
        print(
            f"prompt->shown mask this ({DTYPE_NAMES[dtype]}):  {summary(t_shown)}  (best candidate only, cropped)"
        )
        _time_compact_upscaling(predictor, features, device)
    t_compiled = t_shown_c = None
    if args.compile_decoder:
        ours.compile_decoder()
        start = time.perf_counter()
        predictor.predict(point_coords=point, point_labels=label)
        synchronize(device)
        print(f"compiled decoder warm-up (one prompt shape): {time.perf_counter() - start:.1f} s")
        t_compiled = timed(
            lambda: predictor.predict(point_coords=point, point_labels=label),
            device,
            args.decoder_repeats,
            3,
        )
        print(f"prompt->mask this, compiled decoder: {summary(t_compiled)}")
        if t_shown is not None:
            t_shown_c = timed(shown_mask, device, args.decoder_repeats, 3)
            print(f"prompt->shown mask, compiled decoder: {summary(t_shown_c)}")
        ours.uncompile_decoder()
        t_shown_e = timed(shown_mask, device, args.decoder_repeats, 3)
        print(f"prompt->shown mask this, eager again:  {summary(t_shown_e)}")

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
        if t_shown is not None:
            print(
                f"ratio prompt->shown mask this / transformers (decoder + upscaling of all masks): "
                f"{statistics.median(t_shown) / statistics.median(t_ref_pred):.3f}"
            )
        for name, times in (("mask", t_compiled), ("shown mask", t_shown_c)):
            if times is not None:
                print(
                    f"ratio prompt->{name} this with the compiled decoder / transformers: "
                    f"{statistics.median(times) / statistics.median(t_ref_pred):.3f}"
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


def _time_compiled(ours, pixels, device, repeats: int, reference) -> None:
    """Warm-up and steady-state time of ``torch.compile`` of the image encoder, interleaved with
    eager runs of this implementation and of transformers (when given) for the ratios."""
    compiled = torch.compile(ours.image_encoder)
    x = pixels.to(ours.dtype)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(x)
        synchronize(device)
        warmup = time.perf_counter() - start
        runs: dict[str, list[float]] = {"compiled": [], "eager": [], "transformers": []}
        for _ in range(repeats):
            runs["compiled"] += timed(lambda: compiled(x), device, 1, 0)
            runs["eager"] += timed(lambda: ours.image_encoder(x), device, 1, 0)
            if reference is not None:
                runs["transformers"] += timed(
                    lambda: reference.get_image_embeddings(x), device, 1, 0
                )
    eager, comp = statistics.median(runs["eager"]), statistics.median(runs["compiled"])
    print(f"torch.compile warm-up (first call): {warmup:.1f} s")
    print(f"embedding  this, compiled          : {summary(runs['compiled'])}")
    print(f"embedding  this, eager             : {summary(runs['eager'])}")
    print(
        f"ratio compiled / eager: {comp / eager:.3f}; the warm-up pays off after "
        f"{warmup / max(eager - comp, 1e-9):.0f} embeddings"
        if comp < eager
        else f"ratio compiled / eager: {comp / eager:.3f} (compiling does not pay)"
    )
    if runs["transformers"]:
        print(
            f"ratio compiled / transformers {DTYPE_NAMES[ours.dtype]}: "
            f"{comp / statistics.median(runs['transformers']):.3f}"
        )


def _print_profiles(ours, pixels, reference, dtype, rows: int = 15) -> None:
    """Per-operator self CPU (and CUDA) time of one embedding of each implementation."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if pixels.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sort = "self_cuda_time_total" if pixels.device.type == "cuda" else "self_cpu_time_total"
    models = {"this": lambda: ours.embed_image(pixels)}
    if reference is not None:
        x = pixels.to(dtype)
        models[f"transformers {DTYPE_NAMES[dtype]}"] = lambda: reference.get_image_embeddings(x)
    with torch.inference_mode():
        for name, fn in models.items():
            fn()
            with profile(activities=activities) as prof:
                fn()
                synchronize(pixels.device)
            print(f"\nprofile of one embedding, {name}:")
            print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def _time_compact_upscaling(predictor: SamPredictor, features: torch.Tensor, device) -> None:
    """The upscaling step alone, for a compact object on a 1024² image and a 12000² plane, and
    for a large one on the 12000² plane.

    Random weights give masks speckled over the whole image (the upscaling's worst case, timed
    above); a real object is compact: 40 x 40 of the 256 x 256 low-resolution logits here.
    """
    from napari_segany.sam import SamEmbedding, transforms
    from napari_segany.sam.predictor import model_identity

    model = predictor.model
    state = predictor.get_embedding_state()
    compact = np.full((3, *model.low_res_mask_size), -8.0, dtype=np.float32)
    compact[:, 100:140, 90:130] = 6.0
    for side in (model.image_size, 12000):
        size = (side, side)
        resize = predictor.preprocessing.resize
        input_size = transforms.model_input_size(size, model.image_size, resize)
        predictor.set_embedding_state(
            SamEmbedding(features, size, input_size, model_identity(model))
        )
        for crop in (True, False):
            times = timed(lambda c=crop: predictor.upscale_mask(compact, 1, crop=c), device, 20, 2)
            print(
                f"upscale of a compact shown mask to {side}², {'cropped' if crop else 'full size'}: "
                f"median {statistics.median(times) * 1e3:.3f} ms (min {min(times) * 1e3:.3f}, "
                f"n={len(times)})"
            )
    large = np.full_like(compact, -8.0)
    large[:, 20:236, 10:140] = 6.0  # an object over about half the image
    times = timed(lambda: predictor.upscale_mask(large, 1), device, 5, 1)
    print(
        f"upscale of a large shown mask (half the image) to 12000², full size: "
        f"median {statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, n={len(times)})"
    )
    predictor.set_embedding_state(state)


def _state(predictor: SamPredictor, features: torch.Tensor, size: tuple[int, int]):
    from napari_segany.sam import SamEmbedding
    from napari_segany.sam.predictor import model_identity

    return SamEmbedding(features, size, size, model_identity(predictor.model))


if __name__ == "__main__":
    main()
