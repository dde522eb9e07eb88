"""Arguments shared by the batch subcommands, and their conversion to batch options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "add_execution_arguments",
    "add_input_arguments",
    "add_model_arguments",
    "batch_options",
    "finish_batch",
    "model_spec",
    "positive_int",
]


class UsageError(Exception):
    """A command line that cannot run (exit status 2)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_input_arguments(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    """INPUT..., -o OUT, --recursive, --axis, --channel, --contrast-limits, --overwrite."""
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (TIFF, PNG, JPEG), folders, globs, or zarr arrays (volume.zarr/0)",
    )
    if output:
        parser.add_argument(
            "-o", "--output", required=True, type=Path, metavar="OUT", help="output folder"
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="recompute outputs that exist (default: skip)"
        )
    parser.add_argument("-r", "--recursive", action="store_true", help="search sub-folders")
    parser.add_argument(
        "--axis", type=int, default=None, help="the stack axis (default: all but the last two)"
    )
    parser.add_argument(
        "--channel", type=int, default=None, help="segment this channel of a multichannel input"
    )
    parser.add_argument(
        "--contrast-limits",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="intensities mapped to black and white (default: robust percentiles per image/stack)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    """--model, --device, --precision."""
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"registry name, hub id, folder or checkpoint file (default: {default_model})",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="(auto)"
    )


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, --threads, --scheduler, --quiet."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="run on a local dask cluster of N processes (needs the 'batch' extra)",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing dask scheduler, e.g. tcp://host:8786 (dask-jobqueue on SLURM)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default 1 with --workers/--scheduler; all cores alone)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def model_spec(args: argparse.Namespace) -> Any:
    """The :class:`~napari_segany.batch.operations.ModelSpec` of --model/--device/--precision.

    Checked first, without loading it (see
    :func:`napari_segany.batch.model_catalog.check_model_source`).

    Raises
    ------
    UsageError
        A model that names nothing (no file, registry name or hub id).
    napari_segany.batch.model_catalog.ModelUnavailableError
        Not downloaded and the hub unreachable (exit status 1).
    """
    from napari_segany.batch.model_catalog import UnknownModelError, check_model_source
    from napari_segany.batch.operations import ModelSpec

    try:
        check_model_source(str(args.model))
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    return ModelSpec(
        str(args.model), args.device, args.precision, getattr(args, "compile_decoder", False)
    )


def batch_options(args: argparse.Namespace, *, output: bool = True) -> Any:
    """:class:`~napari_segany.batch.runner.BatchOptions` from the parsed arguments."""
    from napari_segany.batch.runner import BatchOptions
    from napari_segany.batch.volumes import AxisChoice

    _require_batch_extra()
    if args.workers is not None or args.scheduler is not None:
        _require_dask()
    return BatchOptions(
        out_dir=args.output if output else None,
        axes=AxisChoice(args.axis, args.channel),
        recursive=args.recursive,
        overwrite=getattr(args, "overwrite", False),
        quiet=args.quiet,
        contrast_limits=tuple(args.contrast_limits) if args.contrast_limits else None,
        workers=args.workers,
        threads=args.threads,
        scheduler=args.scheduler,
    )


def _require_batch_extra() -> None:
    missing = []
    for module in ("tifffile", "zarr", "tqdm"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(
            f"the command line needs {', '.join(missing)}: pip install 'napari-segany[batch]'"
        )


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(
            "--workers and --scheduler need dask.distributed: pip install 'napari-segany[batch]'"
        ) from None


def finish_batch(record: Any) -> int:
    """Exit status of a finished batch: 1 when an input failed, else 0."""
    return 1 if record.failed else 0
