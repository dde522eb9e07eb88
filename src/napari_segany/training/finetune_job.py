"""The fine-tune widget's pure side: slice selection, one request, one job (load, train, save).

No napari, no Qt: the widget reads its layers into plain arrays, builds a :class:`FinetuneRequest`
with :func:`build_request` and runs :func:`finetune_and_save_job` in a background task.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_segany.training.settings import FinetuneProgress, FinetuneSettings
from napari_segany.training.tiles import separate_held_out

__all__ = [
    "FinetuneOutcome",
    "FinetuneRequest",
    "build_request",
    "finetune_and_save_job",
    "parse_slices",
]


def parse_slices(text: str, count: int) -> list[int]:
    """Slice indices from text: ``"all"``, ``""`` (none), ``"3"``, ``"0-5, 9"`` or ``"2:8"``.

    Ranges with ``-`` include their end, Python ranges with ``:`` do not; negative indices count
    from the end. Raises ``ValueError`` naming a malformed or out-of-range part.
    """
    text = text.strip().lower()
    if text == "all":
        return list(range(count))
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if ":" in part:
                start, stop = (int(x) if x.strip() else None for x in part.split(":", 1))
                chosen.update(range(count)[slice(start, stop)])
                continue
            match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
            values = range(int(match[1]), int(match[2]) + 1) if match else [int(part)]
        except ValueError:
            raise ValueError(f"cannot read slice {part!r}; use e.g. '0-5, 9' or 'all'") from None
        for value in values:
            index = value + count if value < 0 else value
            if not 0 <= index < count:
                raise ValueError(f"slice {value} outside 0..{count - 1}")
            chosen.add(index)
    return sorted(chosen)


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything one fine-tuning run needs, as plain data.

    ``images`` / ``labels`` (and the held-out ones) are lists of (H, W[, C]) and (H, W) arrays.
    """

    model_source: str
    device: str
    precision: str
    images: list[np.ndarray]
    labels: list[np.ndarray]
    val_images: list[np.ndarray]
    val_labels: list[np.ndarray]
    settings: FinetuneSettings
    save_folder: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def build_request(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    rgb: bool,
    train_slices: str,
    held_out_slices: str,
    model_source: str,
    device: str,
    precision: str,
    settings: FinetuneSettings,
    save_folder: Path,
    provenance: dict[str, Any] | None = None,
    gap: int = 2,
) -> FinetuneRequest:
    """Split a 2D image or a stack (slices along the first axis) into training and held-out data.

    Parameters
    ----------
    image
        (H, W), (H, W, 3) with ``rgb``, or (N, H, W) / (N, H, W, 3) for a stack.
    labels
        (H, W) or (N, H, W) integer labels.
    train_slices, held_out_slices
        Text for :func:`parse_slices` (ignored for 2D images, which are all training data).
        Training slices closer than ``gap`` to a held-out slice are dropped (and noted).

    Raises
    ------
    ValueError
        Mismatched shapes, more than one stack axis, or no training slice left.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    spatial = image.ndim - (1 if rgb else 0)
    if spatial == 2:
        if labels.shape != image.shape[:2]:
            raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
        train, held, notes = [None], [], ()
    elif spatial == 3:
        if labels.shape != image.shape[:3]:
            raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:3]}")
        count = image.shape[0]
        wanted = parse_slices(train_slices, count)
        held = parse_slices(held_out_slices, count)
        train, held = separate_held_out(wanted, held, gap=gap)
        dropped = sorted(set(wanted) - set(train))
        notes = (
            (f"slices {dropped} left out of training: within {gap} slices of a held-out slice",)
            if dropped
            else ()
        )
        if not train:
            raise ValueError("no training slice left; choose slices away from the held-out ones")
    else:
        raise ValueError(
            f"fine-tuning takes a 2D image or a stack along one axis, got {image.ndim} dimensions"
        )

    def pick(indices):
        if indices == [None]:
            return [image], [labels]
        return [image[i] for i in indices], [labels[i] for i in indices]

    images, label_list = pick(train)
    val_images, val_labels = pick(held) if held else ([], [])
    record = dict(provenance or {})
    record.update(train_slices=[i for i in train if i is not None], held_out_slices=held)
    return FinetuneRequest(
        model_source=model_source,
        device=device,
        precision=precision,
        images=images,
        labels=label_list,
        val_images=val_images,
        val_labels=val_labels,
        settings=settings,
        save_folder=Path(save_folder),
        provenance=record,
        notes=notes,
    )


@dataclass(frozen=True)
class FinetuneOutcome:
    """A finished run: the result and the folder it was saved to."""

    result: Any
    folder: Path


def finetune_and_save_job(
    request: FinetuneRequest,
    stop_event: threading.Event | None = None,
    *,
    model: Any = None,
) -> Generator[FinetuneProgress, None, FinetuneOutcome]:
    """Load the base model (unless given), fine-tune, save under ``request.save_folder``.

    Yields :class:`FinetuneProgress`; setting ``stop_event`` ends training early and keeps the
    best state so far, which is still evaluated and saved.
    """
    from napari_segany.training.finetune import iter_finetune_sam

    if model is None:
        from napari_segany.sam.loader import load_sam

        yield FinetuneProgress("loading", 0, 1, message=f"loading {request.model_source}")
        model = load_sam(request.model_source, request.device, request.precision)
    result = yield from iter_finetune_sam(
        model,
        request.images,
        request.labels,
        settings=request.settings,
        val_images=request.val_images or None,
        val_labels=request.val_labels or None,
        stop_event=stop_event,
        provenance=request.provenance,
    )
    folder = result.save(request.save_folder)
    return FinetuneOutcome(result, folder)
