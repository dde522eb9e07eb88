"""Decoding prompts off the GUI thread, one request at a time, always finishing on the latest.

While a decode runs, newer requests are not queued one by one: the decoder only remembers that
something changed and, when the running decode ends, asks for a fresh request (the widget then
reads the prompts as they are *now*). So a burst of prompt edits costs at most two decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from superqt.utils import FunctionWorker

from napari_segany.sam.interactive_session import InteractiveSamSession


class PreviewDecoder:
    """Runs ``session.predict`` for one prompt set at a time in a worker thread.

    Parameters
    ----------
    session
        The session whose decoder runs.
    on_result
        ``on_result(context, predictions)``, on the main thread.
    on_error
        ``on_error(exc)``, on the main thread.
    on_stale
        Called (main thread) after a decode when another request arrived meanwhile.
    """

    def __init__(
        self,
        session: InteractiveSamSession,
        on_result: Callable[[Any, list], None],
        on_error: Callable[[BaseException], None],
        on_stale: Callable[[], None],
    ) -> None:
        self.session = session
        self.on_result = on_result
        self.on_error = on_error
        self.on_stale = on_stale
        self.busy = False
        self.again = False
        self._worker: FunctionWorker | None = None

    def request(self, context: Any) -> None:
        """Decode ``context.prompts`` on ``context.key``'s embedding (or note it for later)."""
        if self.busy:
            self.again = True
            return
        self.busy = True
        self.again = False
        session = self.session

        def decode() -> list:
            if not session.activate(context.key):
                raise RuntimeError("the image embedding was dropped from the cache; try again")
            session.set_prompts(context.prompts)
            return session.predict()

        worker = FunctionWorker(decode)
        worker.returned.connect(lambda predictions: self.on_result(context, predictions))
        worker.errored.connect(self.on_error)
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _finished(self) -> None:
        self.busy = False
        self._worker = None
        if self.again:
            self.again = False
            self.on_stale()
