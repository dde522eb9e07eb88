"""``napari-segany seggpt``: SegGPT in-context segmentation of every input from painted examples."""

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
    positive_int,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "seggpt",
        help="SegGPT: segment every input like painted examples",
        description=(
            "Segment every input (stacks slice by slice) like one or more painted examples: "
            "give --prompt-image and --prompt-labels once per example (labels: a 2D integer "
            "image, 0 = unlabelled). Output ids are the examples' label ids."
        ),
    )
    add_input_arguments(parser)
    parser.add_argument(
        "--prompt-image", action="append", required=True, metavar="IMG", help="example image"
    )
    parser.add_argument(
        "--prompt-labels",
        action="append",
        required=True,
        metavar="LABELS",
        help="labels painted on the example image (same order as --prompt-image)",
    )
    parser.add_argument(
        "--max-prompts", type=positive_int, default=4, help="examples used per target (4)"
    )
    parser.add_argument(
        "--uncertainty-threshold",
        type=float,
        default=None,
        help="pixels whose colour is farther than this from every label colour become 0",
    )
    add_model_arguments(parser, "seggpt-vit-l")
    add_execution_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from napari_segany.batch.operations import SegGptPrompts, SegmentWithSegGpt
    from napari_segany.batch.runner import run_batch

    prompts = SegGptPrompts(tuple(args.prompt_image), tuple(args.prompt_labels))
    try:
        prompts.read()
    except Exception as exc:
        raise UsageError(f"prompts: {exc}") from None
    options = batch_options(args)
    operation = SegmentWithSegGpt(
        model_spec(args), prompts, args.max_prompts, args.uncertainty_threshold
    )
    parameters = {
        "prompt_images": list(prompts.images),
        "prompt_labels": list(prompts.labels),
        "max_prompts": args.max_prompts,
        "uncertainty_threshold": args.uncertainty_threshold,
        "axis": args.axis,
        "channel": args.channel,
        "contrast_limits": args.contrast_limits,
    }
    record = run_batch(
        "seggpt",
        args.inputs,
        operation,
        options,
        parameters=parameters,
        model=operation.model.describe(),
    )
    return finish_batch(record)
