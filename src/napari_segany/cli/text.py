"""``napari-segany text``: Grounded SAM, objects named by a text prompt, in every input."""

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
        "text",
        help="Grounded SAM: segment the objects a text prompt names",
        description=(
            "Grounding DINO finds boxes for the text prompt (phrases separated by '.'), SAM "
            "segments each box: instance labels 1..N per image or slice."
        ),
    )
    add_input_arguments(parser)
    parser.add_argument("--prompt", required=True, help='what to find, e.g. "nucleus. cell."')
    parser.add_argument(
        "--detector",
        default="grounding-dino-tiny",
        help="Grounding DINO: registry name, hub id, folder or checkpoint (grounding-dino-tiny)",
    )
    parser.add_argument("--box-threshold", type=float, default=0.35, help="(0.35)")
    parser.add_argument("--text-threshold", type=float, default=0.25, help="(0.25)")
    parser.add_argument("--max-objects", type=positive_int, default=100, help="(100)")
    add_model_arguments(parser, "sam-vit-b")
    add_execution_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    try:
        import napari_segany.grounding  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"Grounded SAM not available ({exc})") from None
    from napari_segany.batch.model_catalog import UnknownModelError, check_model_source
    from napari_segany.batch.operations import ModelSpec, SegmentWithText
    from napari_segany.batch.runner import run_batch

    if not args.prompt.strip(" .?,;"):
        raise UsageError("--prompt is empty")
    try:
        check_model_source(args.detector, option="--detector")
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    options = batch_options(args)
    detector = ModelSpec(str(args.detector), args.device, args.precision)
    operation = SegmentWithText(
        model_spec(args),
        detector,
        args.prompt,
        args.box_threshold,
        args.text_threshold,
        args.max_objects,
    )
    parameters = {
        "prompt": args.prompt,
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "max_objects": args.max_objects,
        "axis": args.axis,
        "channel": args.channel,
        "contrast_limits": args.contrast_limits,
    }
    model = {"sam": operation.model.describe(), "detector": detector.describe()}
    record = run_batch("text", args.inputs, operation, options, parameters=parameters, model=model)
    return finish_batch(record)
