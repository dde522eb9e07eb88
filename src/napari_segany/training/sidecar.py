"""The JSON sidecar of a saved fine-tuned model: its name, format and reading (no torch import)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "FORMAT_VERSION", "SIDECAR_NAME", "is_finetuned_folder", "read_sidecar"]

SIDECAR_NAME = "napari_segany_finetune.json"
FORMAT = "napari-segany-finetuned-sam"
FORMAT_VERSION = 1


def _error(message: str) -> Exception:
    from napari_segany.checkpoints import CheckpointError

    return CheckpointError(message)


def is_finetuned_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_finetuned`."""
    return (Path(path).expanduser() / SIDECAR_NAME).is_file()


def read_sidecar(folder: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a fine-tuned model folder (checked to be one)."""
    path = Path(folder).expanduser() / SIDECAR_NAME
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _error(f"cannot read the fine-tuned model description {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _error(f"{path} is not a napari-segany fine-tuned SAM description")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise _error(
            f"{path} was written by a newer napari-segany (format {document['format_version']})"
        )
    return document
