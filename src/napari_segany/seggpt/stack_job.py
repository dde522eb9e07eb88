"""The SegGPT stack run as a job: a generator that yields each finished slice (numpy only).

The widget runs :func:`segment_job` in a background thread and writes each yielded slice on the
main thread; scripts drain it with :func:`napari_segany.jobs.run_to_completion`.
:func:`parse_slice_list` reads the widget's "prompt slices" text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_segany.seggpt.propagation import SliceKey, SlicePropagation

__all__ = ["SliceDone", "parse_slice_list", "segment_job"]


@dataclass(frozen=True)
class SliceDone:
    """Progress of a run, yielded by :func:`segment_job`: slice ``key`` is done (or none yet).

    Attributes
    ----------
    done, total
        Slices finished so far and planned in all.
    key
        Slice key of the finished slice (``None`` for the first, "starting" progress).
    labels
        (H, W) predicted labels of that slice.
    """

    done: int
    total: int
    key: SliceKey | None = None
    labels: np.ndarray | None = None

    @property
    def message(self) -> str:
        """Short progress text for a progress bar."""
        return f"slice {self.done}/{self.total}" if self.key is not None else "starting"


def segment_job(
    plan: SlicePropagation, predictor: Any, *, should_stop: Callable[[], bool] | None = None
) -> Generator[SliceDone, None, int]:
    """Job: predict the planned slices, yielding each one; returns how many were done.

    ``should_stop()`` is asked before each slice (e.g. "the output layer was deleted"); when it
    says so the job returns early with the count so far.
    """
    total = len(plan)
    yield SliceDone(0, total)
    done = 0
    for key, labels in plan.run(predictor):
        if should_stop is not None and should_stop():
            return done
        done += 1
        yield SliceDone(done, total, key, labels)
    return done


def parse_slice_list(text: str) -> list[int] | None:
    """``"0, 8, 12-14"`` -> ``[0, 8, 12, 13, 14]``; an empty text -> ``None`` (every painted slice).

    Raises
    ------
    ValueError
        Text that is not slice numbers and ``a-b`` ranges.
    """
    text = text.strip()
    if not text:
        return None
    indices: list[int] = []
    for part in re.split(r"[,\s;]+", text):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(
                f"cannot read prompt slices {text!r}: write slice numbers and ranges such as "
                "'0, 8, 12-14', or leave the field empty to use every painted slice"
            )
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        indices.extend(range(min(start, stop), max(start, stop) + 1))
    return list(dict.fromkeys(indices))
