"""The ``napari-segany`` command line: batch segmentation on a laptop or a dask cluster.

Argument parsing only (STYLE rule 15): each subcommand module builds parameters and calls the
pure pipelines of :mod:`napari_segany.batch`. Progress and messages go to stderr, results to
files. Exit status: 0 success, 1 when an input (or a download) failed, 2 for a usage error.

Subcommands: ``everything``, ``seggpt``, ``text``, ``embed``, ``models``, ``download``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_segany.cli import embed, everything, models, seggpt, text
from napari_segany.cli.common import UsageError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    from napari_segany import __version__

    parser = argparse.ArgumentParser(
        prog="napari-segany",
        description=(
            "Segment Anything (SAM), SegGPT and Grounded SAM on many images, stacks and zarr "
            "volumes, in one process or on a dask.distributed cluster."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    everything.add_parser(subparsers)
    seggpt.add_parser(subparsers)
    text.add_parser(subparsers)
    embed.add_parser(subparsers)
    models.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 an input failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help / --version (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        return int(args.run(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"napari-segany {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. weights unavailable, output folder not writable
        print(f"napari-segany {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-segany: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
