"""``napari-segany models`` and ``napari-segany download``: the registry and the weights cache."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from napari_segany.cli.common import UsageError

__all__ = ["add_parsers", "run_download", "run_models"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``models`` and ``download``."""
    models = subparsers.add_parser(
        "models",
        help="list the registered models (size, licence, downloaded or not)",
        description="List the registered models and whether their weights are downloaded.",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=run_models)

    download = subparsers.add_parser(
        "download",
        help="download models into the Hugging Face cache (prepare an offline machine)",
        description=(
            "Download registered models into the Hugging Face cache (~/.cache/huggingface or "
            "$HF_HOME), with progress; copy that folder to prepare an offline machine."
        ),
    )
    download.add_argument("names", nargs="+", metavar="NAME", help="registered model names")
    download.set_defaults(run=run_download)


def run_models(args: argparse.Namespace) -> int:
    """Print the registry; exit status 0."""
    from napari_segany.batch.model_catalog import list_models

    rows = [dict(asdict(entry), downloaded=entry.downloaded) for entry in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "family", "size_mb", "license", "downloaded", "description")
    table = [header] + [
        (
            r["name"],
            r["family"],
            f"{r['size_mb']:.0f}",
            r["license"],
            "yes" if r["downloaded"] else "no",
            r["description"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join(cells + [str(row[-1])]).rstrip())
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Download each name; exit status 1 if any could not be downloaded."""
    from napari_segany.batch.model_catalog import download_model, list_models

    known = {entry.name for entry in list_models()}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        raise UsageError(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    failed = 0
    for name in args.names:
        try:
            path = download_model(name)
        except OSError as exc:
            print(f"napari-segany download: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"napari-segany download: {name}: {path}", file=sys.stderr)
    return 1 if failed else 0
