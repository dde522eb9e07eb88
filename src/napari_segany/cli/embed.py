"""``napari-segany embed``: precompute SAM embeddings into the on-disk embedding cache."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from napari_segany.cli.common import (
    add_execution_arguments,
    add_input_arguments,
    add_model_arguments,
    batch_options,
    finish_batch,
    model_spec,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "embed",
        help="precompute SAM embeddings into a cache folder (instant interactive use later)",
        description=(
            "Compute the SAM image embedding of every slice of every input and store it in "
            "DIR, the folder that open_sam_session(cache_dir=DIR) and the SAM widget's cache "
            "folder read: opening the data later needs no encoder run for the same model, "
            "precision and contrast limits (default: automatic per slice, as contrast_limits="
            "None; pass the napari layer's with --contrast-limits). Slices already in DIR are "
            "skipped. The run record goes to DIR/napari-segany-run.json."
        ),
    )
    add_input_arguments(parser, output=False)
    parser.add_argument("--cache", required=True, type=Path, metavar="DIR", help="cache folder")
    add_model_arguments(parser, "sam-vit-b")
    add_execution_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from napari_segany.batch.operations import ComputeEmbedding
    from napari_segany.batch.runner import run_batch

    options = replace(
        batch_options(args, output=False), stack_contrast=False, record_dir=args.cache
    )
    operation = ComputeEmbedding(model_spec(args), str(args.cache))
    parameters = {
        "cache": str(args.cache),
        "axis": args.axis,
        "channel": args.channel,
        "contrast_limits": args.contrast_limits,
        "objects": "embeddings computed (0 when already cached)",
    }
    record = run_batch(
        "embed",
        args.inputs,
        operation,
        options,
        parameters=parameters,
        model=operation.model.describe(),
    )
    return finish_batch(record)
