"""Running one long job at a time off the main thread, with a progress bar and a cancel button.

A *job* is a generator function (STYLE rule 8). It yields progress, either a ``(done, total)``
tuple or any object with ``done`` and ``total`` attributes (and optionally ``message`` for the
label and ``text`` for the bar, e.g. the bytes of a download), and returns its result. :class:`BackgroundTask` runs it in a worker thread (the ``thread_worker``
machinery napari uses, from ``superqt``) and calls the given callbacks on the main thread:

- ``on_yielded(value)`` for every yielded value (after the progress bar is updated), so results
  can be shown piece by piece (for example slice by slice);
- ``on_returned(result)`` once, when the job finished normally: the place to write layers;
- ``on_error(exc)`` when the job raised; the default shows a napari error notification that says
  what to do (:func:`describe_failure`);
- ``on_aborted()`` after the user pressed *Cancel* (checked at every yield; ``on_returned`` is then
  never called, so layers stay untouched);
- ``on_finished()`` in every case, last.

Example
-------
>>> def count(n):
...     for i in range(n):
...         yield i + 1, n
...     return "done"
>>> task = BackgroundTask()
>>> task.start(count, 10, description="Counting", on_returned=print)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget
from superqt.utils import GeneratorWorker

logger = logging.getLogger(__name__)

Callback = Callable[..., Any] | None


class JobFailed(Exception):
    """Wraps a ``RuntimeError`` or a ``BaseException`` raised by a job.

    The worker machinery treats a ``RuntimeError`` escaping the generator as "the worker was
    deleted" and drops it silently, and lets a ``BaseException`` (``KeyboardInterrupt``,
    ``SystemExit``) end the thread without any signal, so the task would stay "running" forever;
    wrapping keeps both visible and the task usable. The original is ``__cause__``.
    """


def describe_failure(description: str, exc: BaseException) -> str:
    """A one-paragraph message for a failed job: what happened and what the user can do.

    Parameters
    ----------
    description
        What the job was doing, e.g. ``"Computing the image embedding"``.
    exc
        The exception the job raised (a :class:`JobFailed` is unwrapped).
    """
    if isinstance(exc, JobFailed) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    if _is_out_of_memory(exc):
        hint = (
            "Out of memory. Try a smaller model (sam-vit-b, slimsam-77), a lower precision "
            "(bf16 or fp16), the other device (cpu has more memory than most GPUs), or close "
            "other programs; nothing in your layers was changed."
        )
    elif isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        hint = "Check the path: pick an existing model folder or checkpoint file."
    elif type(exc).__name__ in ("CheckpointError", "WeightsUnavailableError"):
        hint = (
            "Check the model choice: pick a registry name, or a custom path to a model folder "
            "(config.json + weights) or an original .pth checkpoint. Without internet only "
            "models already in the Hugging Face cache or on disk can be used."
        )
    elif isinstance(exc, ValueError):
        hint = "Check the inputs named above; nothing in your layers was changed."
    else:
        hint = "Nothing in your layers was changed; see the log for the full traceback."
    return f"{description} failed: {text}\n{hint}"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def progress_of(value: Any) -> tuple[int, int, str] | None:
    """Read ``(done, total, message)`` from a yielded value, or ``None`` if it carries none."""
    if isinstance(value, tuple) and len(value) >= 2:
        done, total = value[0], value[1]
        if isinstance(done, int | float) and isinstance(total, int | float):
            return int(done), int(total), ""
        return None
    done = getattr(value, "done", None)
    total = getattr(value, "total", None)
    if isinstance(done, int | float) and isinstance(total, int | float):
        return int(done), int(total), str(getattr(value, "message", "") or "")
    return None


MAX_BAR_VALUE = 2**31 - 1
"""Largest value of a ``QProgressBar``; larger totals (bytes of a big download) are scaled down."""


def bar_text_of(value: Any) -> str:
    """The progress bar's text for a yielded value: its ``text`` (e.g. ``"12.3 / 375.0 MB"``)
    when it has one, else the percentage."""
    text = getattr(value, "text", None)
    if isinstance(text, str) and text:
        return text.replace("%", "%%")  # QProgressBar's format treats % as an escape
    return "%p%"


def _guarded_job(job: Callable[..., Generator], args: tuple, kwargs: dict) -> Generator:
    try:
        result = yield from job(*args, **kwargs)
    except GeneratorExit:
        raise
    except (RuntimeError, KeyboardInterrupt, SystemExit) as exc:
        raise JobFailed(str(exc) or type(exc).__name__) from exc
    except Exception:
        raise
    except BaseException as exc:
        raise JobFailed(str(exc) or type(exc).__name__) from exc
    return result


class BackgroundTask(QWidget):
    """Progress bar, status text and *Cancel* button for one background job at a time.

    Parameters
    ----------
    parent
        The owning widget.
    notify_error
        Called with the message when a job fails and no ``on_error`` was given; defaults to
        ``napari.utils.notifications.show_error``.

    Signals
    -------
    busy_changed(bool)
        Emitted when a job starts (``True``) and when it ended (``False``: returned, failed or
        cancelled), before that outcome's callback runs, so callbacks may start the next job.
    """

    busy_changed = Signal(bool)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        notify_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(parent)
        self._worker: GeneratorWorker | None = None
        self._notify_error = notify_error
        self._description = ""
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("idle")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; layers are left as they were")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.progress_bar, stretch=1)
        layout.addWidget(self.cancel_button)

    @property
    def is_running(self) -> bool:
        """Whether a job is running (or cancelling and not yet stopped)."""
        return self._worker is not None

    def stop_requested(self) -> bool:
        """Whether the running job should stop (*Cancel* was pressed); safe from any thread.

        Long steps inside a job poll it (e.g. between encoder blocks) so Cancel acts at once.
        """
        worker = self._worker
        return worker is None or bool(worker.abort_requested)

    @property
    def description(self) -> str:
        """What the running (or last) job does."""
        return self._description

    def start(
        self,
        job: Callable[..., Generator],
        *args: Any,
        description: str,
        on_yielded: Callback = None,
        on_returned: Callback = None,
        on_error: Callback = None,
        on_aborted: Callback = None,
        on_finished: Callback = None,
        **kwargs: Any,
    ) -> GeneratorWorker:
        """Run ``job(*args, **kwargs)`` in a worker thread.

        Raises
        ------
        RuntimeError
            Another job is still running (one job at a time; check :attr:`is_running`).
        TypeError
            ``job`` is not a generator function.
        """
        if self._worker is not None:
            raise RuntimeError(
                f"{self._description!r} is still running; wait for it or press Cancel first"
            )
        worker = GeneratorWorker(_guarded_job, job, args, kwargs)
        self._worker = worker
        self._description = description
        self.label.setText(description)
        self.progress_bar.setRange(0, 0)  # busy indicator until the first progress arrives
        self.progress_bar.setFormat("%p%")
        self.cancel_button.setEnabled(True)

        def yielded(value: Any) -> None:
            if worker is not self._worker:
                return
            progress = progress_of(value)
            if progress is not None:
                done, total, message = progress
                if total > 0:
                    scale = -(-total // MAX_BAR_VALUE)  # QProgressBar counts in 32-bit ints
                    self.progress_bar.setRange(0, total // scale)
                    self.progress_bar.setValue(min(done, total) // scale)
                self.progress_bar.setFormat(bar_text_of(value))
                if message:
                    self.label.setText(f"{description}: {message}")
            if on_yielded is not None:
                on_yielded(value)

        def release() -> None:
            # Free the task before any callback runs, so a callback may start the next job.
            if worker is self._worker:
                self._worker = None
                self.cancel_button.setEnabled(False)
                self.progress_bar.setRange(0, 1)
                self.progress_bar.setValue(0)
                self.progress_bar.setFormat("idle")
                self.label.setText("")
                self.busy_changed.emit(False)

        def returned(result: Any) -> None:
            release()
            if on_returned is not None:
                on_returned(result)

        def errored(exc: BaseException) -> None:
            cancelled = worker.abort_requested
            release()
            if cancelled:  # the job stopped itself after Cancel (e.g. between encoder blocks)
                if on_aborted is not None:
                    on_aborted()
                return
            logger.error("%s failed", description, exc_info=exc)
            if on_error is not None:
                on_error(exc)
            else:
                self._show_error(describe_failure(description, exc))

        def aborted() -> None:
            release()
            if on_aborted is not None:
                on_aborted()

        def finished() -> None:
            release()
            if on_finished is not None:
                on_finished()

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next yield; nothing is written afterwards."""
        if self._worker is not None:
            self._worker.quit()
            self.cancel_button.setEnabled(False)
            self.label.setText(f"{self._description}: cancelling…")

    def _show_error(self, message: str) -> None:
        if self._notify_error is not None:
            self._notify_error(message)
            return
        from napari.utils.notifications import show_error

        show_error(message)
