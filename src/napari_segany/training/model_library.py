"""Where fine-tuned models are kept, and the list the widgets' model pickers show.

Default folder: ``$NAPARI_SEGANY_FINETUNED_DIR``, else ``$XDG_CACHE_HOME/napari-segany/finetuned``
(``~/.cache/napari-segany/finetuned``). Each model is a sub-folder written by
:meth:`FinetuneResult.save <napari_segany.training.FinetuneResult.save>`; ``load_sam(path)``
loads it. Only the JSON sidecars are read to list them (no torch import).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_segany.training.sidecar import SIDECAR_NAME, read_sidecar

__all__ = [
    "FinetunedModelInfo",
    "finetuned_models_folder",
    "list_finetuned_models",
    "new_model_folder",
]


@dataclass(frozen=True)
class FinetunedModelInfo:
    """One saved fine-tuned model, as a model picker shows it.

    Attributes
    ----------
    name
        The folder name (what a picker displays).
    path
        The folder; pass it to ``load_sam``.
    base
        The base model's source.
    mode
        ``"decoder"`` or ``"lora"``.
    improved
        Whether it beat its base on held-out data (None: not evaluated).
    created
        ISO timestamp.
    metrics
        ``{"before": ..., "after": ...}``.
    """

    name: str
    path: Path
    base: str
    mode: str
    improved: bool | None
    created: str
    metrics: dict[str, Any] = field(default_factory=dict)


def finetuned_models_folder() -> Path:
    """The folder that holds the user's fine-tuned models (not created here)."""
    explicit = os.environ.get("NAPARI_SEGANY_FINETUNED_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "napari-segany" / "finetuned"


def list_finetuned_models(folder: str | os.PathLike | None = None) -> list[FinetunedModelInfo]:
    """The fine-tuned models saved under ``folder`` (default :func:`finetuned_models_folder`),
    newest first. Folders with an unreadable sidecar are skipped."""
    root = Path(folder).expanduser() if folder is not None else finetuned_models_folder()
    if not root.is_dir():
        return []
    found = []
    for sidecar in root.glob(f"*/{SIDECAR_NAME}"):
        try:
            document = read_sidecar(sidecar.parent)
        except ValueError:
            continue
        found.append(
            FinetunedModelInfo(
                name=sidecar.parent.name,
                path=sidecar.parent,
                base=str(document.get("base", {}).get("source", "")),
                mode=str(document.get("mode", "decoder")),
                improved=document.get("improved"),
                created=str(document.get("created", "")),
                metrics=document.get("metrics") or {},
            )
        )
    return sorted(found, key=lambda info: info.created, reverse=True)


def new_model_folder(base_name: str, folder: str | os.PathLike | None = None) -> Path:
    """A fresh sub-folder path (not created) named after the base model and the current time."""
    root = Path(folder).expanduser() if folder is not None else finetuned_models_folder()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(base_name)).name).strip("-") or "sam"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{stem}-finetuned-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stem}-finetuned-{stamp}-{suffix}"
    return path
