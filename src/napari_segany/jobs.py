"""Long work is a generator that yields progress and returns its result (STYLE rule 8).

The napari side runs such a job in a thread worker; scripts and the non-GUI API run it here.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["run_collecting", "run_to_completion"]


def run_to_completion(job: Generator[Any, Any, Any]) -> Any:
    """Run a job generator to its end in this thread, ignoring its progress, and return its result."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def run_collecting(job: Generator[Any, Any, Any]) -> tuple[list[Any], Any]:
    """Run a job generator to its end in this thread; return ``(every yielded value, result)``."""
    steps: list[Any] = []
    while True:
        try:
            steps.append(next(job))
        except StopIteration as stop:
            return steps, stop.value
