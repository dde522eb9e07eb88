"""The run file ``OUT/napari-segany-run.json``: what was run, on what, and how each input went."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_segany.batch.outputs import atomic_write_text

__all__ = ["RUN_FILE_NAME", "InputRecord", "RunRecord"]

RUN_FILE_NAME = "napari-segany-run.json"


@dataclass
class InputRecord:
    """How one input went.

    Attributes
    ----------
    input
        The input as named on the command line / found in a folder (``volume.zarr/0``).
    output
        The output path, or None when the input could not be opened.
    status
        ``"done"``, ``"skipped"`` (the output existed; ``--overwrite`` recomputes it), ``"failed"``
        or ``"pending"`` (the run stopped before it).
    objects
        Objects found (summed over the slices of a stack; each slice numbers its own from 1).
    seconds
        Compute time summed over its tasks (all workers).
    slices
        Number of 2D slices.
    resumed_slices
        Slices finished by an earlier, interrupted run and not recomputed.
    error
        Why it failed.
    """

    input: str
    output: str | None = None
    status: str = "pending"
    objects: int | None = None
    seconds: float = 0.0
    slices: int = 0
    resumed_slices: int = 0
    error: str | None = None


@dataclass
class RunRecord:
    """Everything needed to know how outputs were made (JSON, rewritten as inputs finish)."""

    command: str
    parameters: dict[str, Any]
    model: dict[str, Any]
    execution: dict[str, Any]
    inputs: list[InputRecord] = field(default_factory=list)
    package: str = "napari-segany"
    version: str = ""
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    python: str = field(default_factory=lambda: sys.version.split()[0])
    platform: str = field(default_factory=platform.platform)

    def __post_init__(self) -> None:
        if not self.version:
            from napari_segany import __version__

            self.version = __version__

    @property
    def failed(self) -> list[InputRecord]:
        """Inputs that failed."""
        return [r for r in self.inputs if r.status == "failed"]

    def to_json(self) -> str:
        """The record as indented JSON."""
        return json.dumps(asdict(self), indent=2, default=_jsonable)

    def write(self, out_dir: Path) -> Path:
        """Write (atomically) ``out_dir/napari-segany-run.json`` and return its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / RUN_FILE_NAME
        atomic_write_text(path, self.to_json())
        return path

    def finish(self) -> None:
        """Stamp the end time."""
        self.finished = _now()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
