"""Writing many labelled pixels without freezing the GUI: a few per event-loop turn, one undo step.

napari's ``Labels.data_setitem`` (which records undo and redraws only the changed region) costs
about 0.3 µs per pixel on the main thread, so a 2-million-pixel object would hold the GUI for
more than half a second. :func:`write_in_chunks` writes at most :data:`CHUNK_PIXELS` per turn of
the Qt event loop inside one ``block_history``, so the result is still a single undo step and
the viewer stays responsive. Writes too large for the undo budget are plain crop assignments
(fast) and are not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from napari_segany._napari import layer_io

CHUNK_PIXELS = 100_000
"""Most pixels written per event-loop turn (about 30 ms of ``data_setitem``)."""


def write_in_chunks(
    labels: Any,
    edits: Sequence[layer_io.PlaneEdit | None],
    on_done: Callable[[bool], None],
    parent: Any,
    chunks: list | None = None,
) -> bool:
    """Apply ``edits`` to ``labels``; ``on_done(undoable)`` is called when everything is written.

    Small writes happen at once (returns ``True``: ``on_done`` was already called); larger
    undoable ones are spread over event-loop turns (returns ``False``) by a timer owned by the
    Qt object ``parent`` (the widget). ``chunks`` (from :func:`prepare_chunks`, computed in
    a worker thread) saves the main thread from finding the changed pixels.
    """
    edits = [e for e in edits if e is not None]
    total = sum(e.n_changed for e in edits)
    undoable = layer_io.edits_fit_undo(edits)
    if total <= CHUNK_PIXELS or not undoable:
        on_done(layer_io.apply_edits(labels, edits, undoable=undoable))
        return True
    chunks = list(prepare_chunks(edits)) if chunks is None else list(chunks)
    history = ExitStack()
    history.enter_context(labels.block_history())
    timer = QTimer(parent)
    timer.setInterval(0)

    def step() -> None:
        try:
            if chunks:
                indices, values = chunks.pop(0)
                labels.data_setitem(indices, values)
            if not chunks:
                timer.stop()
                timer.deleteLater()
                history.close()  # commits the whole write as one undo step
                on_done(True)
        except BaseException:
            timer.stop()
            history.close()
            raise

    timer.timeout.connect(step)
    timer.start()
    return False


def prepare_chunks(edits: Sequence[layer_io.PlaneEdit | None]) -> list:
    """``(indices, values)`` pieces of at most :data:`CHUNK_PIXELS` (numpy only, any thread)."""
    return list(_chunks([e for e in edits if e is not None]))


def _chunks(edits: Sequence[layer_io.PlaneEdit]):
    for edit in edits:
        indices = edit.indices()
        values = edit.values()
        for start in range(0, len(values), CHUNK_PIXELS):
            stop = start + CHUNK_PIXELS
            yield tuple(np.asarray(i[start:stop]) for i in indices), values[start:stop]
