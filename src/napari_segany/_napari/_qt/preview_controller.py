"""When to decode the preview: on the leading edge of a burst of prompt edits, then coalesced.

The first prompt change of a burst is decoded at once, from the event handler of the change itself
(no debounce, and before the canvas repaints for the new prompt); other changes (slice, form) on
the next event-loop turn. While that decode runs in a worker thread, later
changes only mark the controller *dirty*; when the decode ends, one more round reads the prompts
as they are *now*. So a burst of edits costs at most two decodes and the preview always ends on
the latest prompts. A result whose version is older than the latest change is never shown.

The controller knows nothing about layers: ``on_tick()`` asks the widget to read its prompts
and either call :meth:`PreviewController.decode` or do something else (compute an embedding,
clear the preview).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer
from superqt.utils import FunctionWorker

from napari_segany.sam.interactive_session import InteractiveSamSession


class PreviewController(QObject):
    """Versioned, leading-edge, coalescing preview decoding for one session.

    Parameters
    ----------
    session
        Its :meth:`~InteractiveSamSession.decode` runs in a worker thread.
    on_tick
        Called on the main thread when the preview should be brought up to date.
    on_result
        ``on_result(context, predictions)`` on the main thread, only for the latest version.
    on_error
        ``on_error(exc)`` on the main thread.
    parent
        Qt parent (the widget), so the timer dies with it.
    """

    def __init__(
        self,
        session: InteractiveSamSession,
        *,
        on_tick: Callable[[], None],
        on_result: Callable[[Any, list], None],
        on_error: Callable[[BaseException], None],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.on_tick = on_tick
        self.on_result = on_result
        self.on_error = on_error
        self.version = 0
        self.busy = False
        self.dirty = False
        self.closed = False
        self._worker: FunctionWorker | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._fire)

    @property
    def pending(self) -> bool:
        """A decode is running or an update is scheduled."""
        return self.busy or self._timer.isActive()

    def request(self, *_: Any, immediate: bool = False) -> None:
        """Something changed: bring the preview up to date as soon as possible.

        ``immediate`` (a prompt edit) starts from this very event handler, before the canvas
        repaints; otherwise on the next event-loop turn, so that form changes made together
        (e.g. a path and a device) are read together.
        """
        if self.closed:
            return
        self.version += 1
        if self.busy:
            self.dirty = True
        elif immediate and not self._timer.isActive():
            self._fire()  # leading edge: start before the canvas repaints for the new prompt
        elif not self._timer.isActive():
            self._timer.start()

    def _fire(self) -> None:
        if self.closed:
            return
        if self.busy:
            self.dirty = True
            return
        self.on_tick()

    def decode(self, context: Any) -> None:
        """Decode ``context.prompts`` on ``context.key`` in a worker (``context.version`` tags it)."""
        if self.busy:
            self.dirty = True
            return
        self.busy = True
        self.dirty = False
        worker = FunctionWorker(self.session.decode, context.key, context.prompts)
        worker.returned.connect(lambda predictions: self._returned(context, predictions))
        worker.errored.connect(self.on_error)
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _returned(self, context: Any, predictions: list) -> None:
        if self.closed:
            return
        if context.version != self.version:
            self.dirty = True  # prompts changed meanwhile: decode the latest ones next
            return
        self.on_result(context, predictions)

    def _finished(self) -> None:
        self.busy = False
        self._worker = None
        if self.dirty and not self.closed:
            self.dirty = False
            self._timer.start()

    def close(self) -> None:
        """Stop reacting (the widget is gone)."""
        self.closed = True
        self._timer.stop()
