"""Choosing, loading and caching a model: registry name or custom path, device and precision.

:class:`ModelPicker` is a group of magicgui rows shared by the SAM and SegGPT widgets (the rows go
into the widget's own form, so their labels line up with the other rows):

- *model*: the registry names of one model family, plus ``"custom path…"``;
- *path*: a model folder (Hugging Face layout) or a checkpoint file (``.pth``, ``.safetensors``),
  typed or picked with the *File…* / *Folder…* buttons; used when *model* is ``"custom path…"``;
- *device*: ``auto``, ``cpu``, ``cuda``, ``mps``;
- *precision*: ``auto``, ``fp32``, ``bf16``, ``fp16``.

:meth:`ModelPicker.request_model` loads the chosen model in the background (through a
:class:`~napari_segany._napari._qt.background_task.BackgroundTask`, whose bar shows the bytes of
a download from the Hugging Face Hub, e.g. "120.5 / 375.0 MB") and keeps it in a small cache keyed
by ``(source, device, precision)``, so switching back and forth does not reload weights. The cache
belongs to the picker (and so to the widget that owns it), never to the module.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import ComboBox, Container, LineEdit, PushButton, Widget
from psygnal import Signal

from napari_segany._napari._qt.background_task import BackgroundTask

CUSTOM_PATH = "custom path…"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

ModelLoader = Callable[[str, str, str], Any]
"""``loader(source, device, precision) -> model``; runs in a worker thread."""


@dataclass(frozen=True)
class ModelChoice:
    """What the user picked: a registry name or path, a device and a precision name."""

    source: str
    device: str = "auto"
    precision: str = "auto"

    @property
    def key(self) -> tuple[str, str, str]:
        """Cache key ``(source, device, precision)``."""
        return (self.source, self.device, self.precision)


class LoadedModelCache:
    """The last ``max_models`` loaded models, keyed by :attr:`ModelChoice.key` (LRU order).

    Parameters
    ----------
    max_models
        How many models to keep; the least recently used one is dropped (and its memory freed
        when nothing else holds it) when a new one is added.
    """

    def __init__(self, max_models: int = 2) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, str, str], Any] = OrderedDict()

    def get(self, choice: ModelChoice) -> Any | None:
        """The cached model for ``choice`` (marked most recently used), or ``None``."""
        model = self._models.get(choice.key)
        if model is not None:
            self._models.move_to_end(choice.key)
        return model

    def put(self, choice: ModelChoice, model: Any) -> None:
        """Add (or refresh) a model, dropping the least recently used beyond the bound."""
        self._models[choice.key] = model
        self._models.move_to_end(choice.key)
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)

    def clear(self) -> None:
        """Drop every cached model."""
        self._models.clear()

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, choice: object) -> bool:
        return isinstance(choice, ModelChoice) and choice.key in self._models


def load_model_job(
    loader: ModelLoader,
    choice: ModelChoice,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Any, None, Any]:
    """Job for :class:`BackgroundTask`: load one model.

    Yields ``(0, 1)``, then a :class:`~napari_segany.checkpoints.DownloadProgress` (bytes done /
    total of the file being fetched) whenever a download on the way reports progress, then
    ``(1, 1)``. The loader runs in a helper thread inside
    :func:`~napari_segany.checkpoints.report_download_progress`, whose reports this generator
    yields (only the newest of a burst), so the bytes reach the progress bar while the loader
    blocks. ``should_stop()`` true (*Cancel*) stops a running download at its next chunk.
    """
    yield 0, 1
    updates: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def report(progress: Any) -> None:
        if should_stop is not None and should_stop():
            from napari_segany.checkpoints import DownloadCancelled

            raise DownloadCancelled("download cancelled")
        updates.put(progress)

    def load() -> None:
        try:
            from napari_segany.checkpoints import report_download_progress

            with report_download_progress(report):
                outcome["model"] = loader(choice.source, choice.device, choice.precision)
        except BaseException as exc:  # handed to the job, which raises it in the worker
            outcome["error"] = exc
        finally:
            updates.put(None)  # always the last item

    helper = threading.Thread(target=load, name=f"loading {choice.source}", daemon=True)
    helper.start()
    finished = False
    while not finished:
        batch = [updates.get()]
        while True:
            try:
                batch.append(updates.get_nowait())
            except queue.Empty:
                break
        finished = batch[-1] is None
        reports = [item for item in batch if item is not None]
        if reports:
            yield reports[-1]
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    yield 1, 1
    return outcome["model"]


class ModelPicker:
    """Model / path / device / precision rows with a background loader and a model cache.

    Not a container: the owning widget puts :attr:`widgets` into its own form. :attr:`changed`
    is emitted when any of the rows changes.

    Parameters
    ----------
    names
        Registry names offered in the *model* box (the first one is the default).
    loader
        ``loader(source, device, precision) -> model``, called in a worker thread; ``source`` is a
        registry name or a path.
    default
        Registry name selected initially (defaults to ``names[0]``).
    max_models
        Bound of the loaded-model cache.
    """

    changed = Signal(object)

    def __init__(
        self,
        names: Sequence[str],
        loader: ModelLoader,
        *,
        default: str | None = None,
        max_models: int = 2,
    ) -> None:
        names = list(names)
        self.loader = loader
        self.cache = LoadedModelCache(max_models)
        self.model_box = ComboBox(
            label="model",
            choices=[*names, CUSTOM_PATH],
            value=default if default is not None else (names[0] if names else CUSTOM_PATH),
            tooltip="A model from the registry (downloaded once into the Hugging Face cache), "
            "or a custom path",
        )
        self.path_edit = LineEdit(
            label="path",
            tooltip="Custom model: a folder (config.json + model.safetensors) or a checkpoint "
            "file (.pth / .safetensors)",
        )
        self.file_button = PushButton(text="File…")
        self.folder_button = PushButton(text="Folder…")
        path_row = Container(
            widgets=[self.path_edit, self.file_button, self.folder_button],
            layout="horizontal",
            labels=False,
            label="path",
        )
        path_row.margins = (0, 0, 0, 0)
        self.path_row = path_row
        self.device_box = ComboBox(
            label="device",
            choices=list(DEVICES),
            value="auto",
            tooltip="auto picks CUDA, then Apple MPS, then the CPU",
        )
        self.precision_box = ComboBox(
            label="precision",
            choices=list(PRECISIONS),
            value="auto",
            tooltip="auto: bf16 where the hardware computes it natively, else fp32 (fp16 on MPS)",
        )
        self.widgets: list[Widget] = [
            self.model_box,
            path_row,
            self.device_box,
            self.precision_box,
        ]
        for box in (self.model_box, self.path_edit, self.device_box, self.precision_box):
            box.changed.connect(lambda *_: self.changed.emit(self.choice))
        self.model_box.changed.connect(self._update_path_enabled)
        self.file_button.changed.connect(self._browse_file)
        self.folder_button.changed.connect(self._browse_folder)
        self._update_path_enabled()

    @property
    def choice(self) -> ModelChoice:
        """The current choice (the path when *custom path…* is selected)."""
        source = self.model_box.value
        if source == CUSTOM_PATH:
            source = self.path_edit.value.strip()
        return ModelChoice(source, self.device_box.value, self.precision_box.value)

    def set_custom_path(self, path: str) -> None:
        """Select *custom path…* with ``path`` (a folder or a checkpoint file)."""
        self.path_edit.value = str(path)
        self.model_box.value = CUSTOM_PATH

    def cached_model(self) -> Any | None:
        """The already loaded model for the current choice, or ``None``."""
        return self.cache.get(self.choice)

    def request_model(
        self,
        task: BackgroundTask,
        on_ready: Callable[[Any, ModelChoice], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
    ) -> bool:
        """Call ``on_ready(model, choice)`` with the chosen model, loading it first if needed.

        A cached model is handed over at once (returns ``True``). Otherwise the load runs on
        ``task`` and ``on_ready`` is called from the main thread when it is done (returns
        ``False``); failures go to ``on_error`` (default: ``task``'s error notification).

        Raises
        ------
        ValueError
            *custom path…* is selected but no path was given.
        RuntimeError
            ``task`` is busy with another job.
        """
        choice = self.choice
        if not choice.source:
            raise ValueError(
                "no model path given: type or pick a model folder or checkpoint file, or choose "
                "a model from the list"
            )
        model = self.cache.get(choice)
        if model is not None:
            on_ready(model, choice)
            return True

        def loaded(model: Any) -> None:
            self.cache.put(choice, model)
            on_ready(model, choice)

        task.start(
            load_model_job,
            self.loader,
            choice,
            should_stop=task.stop_requested,
            description=f"Loading {choice.source}",
            on_returned=loaded,
            on_error=on_error,
            on_aborted=on_aborted,
        )
        return False

    def _update_path_enabled(self, *_: Any) -> None:
        custom = self.model_box.value == CUSTOM_PATH
        for widget in (self.path_edit, self.file_button, self.folder_button):
            widget.enabled = custom

    def _browse_file(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _filter = QFileDialog.getOpenFileName(
            self.model_box.native,
            "Model checkpoint",
            "",
            "Checkpoints (*.pth *.pt *.bin *.safetensors)",
        )
        if path:
            self.set_custom_path(path)

    def _browse_folder(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self.model_box.native, "Model folder")
        if path:
            self.set_custom_path(path)
