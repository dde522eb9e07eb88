"""``napari-segany everything``: SAM automatic segmentation of every input."""

from __future__ import annotations

import argparse

from napari_segany.cli.common import (
    UsageError,
    add_execution_arguments,
    add_input_arguments,
    add_model_arguments,
    batch_options,
    finish_batch,
    model_spec,
    non_negative_int,
    positive_int,
)

__all__ = ["add_parser", "run"]

# (option, generator keyword, type, default, help); defaults are the generator's.
GENERATOR_OPTIONS = (
    ("--points-per-side", "points_per_side", positive_int, 32, "grid points along each side"),
    ("--points-per-batch", "points_per_batch", positive_int, 64, "prompts decoded at once"),
    ("--pred-iou-thresh", "pred_iou_thresh", float, 0.88, "keep masks with predicted IoU above"),
    (
        "--stability-score-thresh",
        "stability_score_thresh",
        float,
        0.95,
        "keep masks at least this stable",
    ),
    ("--box-nms-thresh", "box_nms_thresh", float, 0.7, "box IoU above which masks are duplicates"),
    (
        "--min-mask-region-area",
        "min_mask_region_area",
        non_negative_int,
        0,
        "remove holes and islands smaller than this (pixels)",
    ),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "everything",
        help="SAM automatic segmentation (instance labels) of every input",
        description=(
            "Segment everything with SAM: a grid of point prompts, filtered and de-duplicated, "
            "gives instance labels. Stacks are segmented slice by slice (each slice numbers its "
            "objects from 1). Outputs: OUT/name_labels.tif, or OUT/name_labels.zarr for zarr."
        ),
    )
    add_input_arguments(parser)
    add_model_arguments(parser, "sam-vit-b")
    for option, _, kind, default, text in GENERATOR_OPTIONS:
        parser.add_argument(option, type=kind, default=default, help=f"{text} ({default})")
    parser.add_argument(
        "--tile-size",
        type=non_negative_int,
        default=1024,
        help="process larger images in tiles of this size, 0: never tile (1024)",
    )
    parser.add_argument(
        "--tile-overlap", type=non_negative_int, default=256, help="tile overlap (256)"
    )
    parser.add_argument(
        "--compile-decoder",
        action="store_true",
        help="torch.compile SAM's mask decoder: the first image compiles it (10-30 s on a laptop "
        "CPU); on a CPU later images are only a few percent faster, on a GPU the decoder runs as "
        "CUDA graphs",
    )
    add_execution_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from napari_segany.batch.operations import SegmentEverything
    from napari_segany.batch.runner import run_batch

    if args.tile_size and args.tile_size <= args.tile_overlap:
        raise UsageError(
            f"--tile-size {args.tile_size} must be larger than --tile-overlap {args.tile_overlap}"
        )
    if args.compile_decoder:
        from napari_segany.models.precision import resolve_device
        from napari_segany.models.sam.sam import compile_problem

        try:
            problem = compile_problem(resolve_device(args.device))
        except ValueError as exc:  # a device this machine does not have
            raise UsageError(str(exc)) from None
        if problem:
            raise UsageError(f"--compile-decoder: {problem}")
    options = batch_options(args)
    generator = tuple((keyword, getattr(args, keyword)) for _, keyword, *_ in GENERATOR_OPTIONS)
    tile_size = args.tile_size or None
    operation = SegmentEverything(model_spec(args), tile_size, args.tile_overlap, generator)
    parameters = dict(generator, tile_size=tile_size, tile_overlap=args.tile_overlap)
    parameters.update(axis=args.axis, channel=args.channel, contrast_limits=args.contrast_limits)
    record = run_batch(
        "everything",
        args.inputs,
        operation,
        options,
        parameters=parameters,
        model=operation.model.describe(),
    )
    return finish_batch(record)
