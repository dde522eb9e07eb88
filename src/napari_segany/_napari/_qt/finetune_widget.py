"""The Fine-tune dock widget: train SAM's mask decoder on the labels the user painted.

Thin (STYLE rule 7): it reads an image and a labels layer into arrays, builds a
:class:`~napari_segany.training.finetune_job.FinetuneRequest`, runs
:func:`~napari_segany.training.finetune_job.finetune_and_save_job` in a background task with a
live loss curve, and shows the before/after table on the held-out slices. *Stop and keep best*
ends training early and keeps the best state so far (it is still scored and saved); the task
bar's *Cancel* discards the run. *Use this model* switches the Segment Anything widget to the
saved model (``SamWidget.use_model_source``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, PushButton
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPixmap
from qtpy.QtWidgets import QLabel, QTableWidget, QTableWidgetItem

from napari_segany._napari._qt.background_task import BackgroundTask
from napari_segany._napari._qt.dock_form import FORM_WIDTH, DockForm, find_docked, wrapped_label
from napari_segany._napari._qt.model_picker import ModelPicker
from napari_segany._napari._qt.sam_widget import SamWidget, load_sam_model, sam_model_names

if TYPE_CHECKING:
    import napari

MODES = [
    ("quick: mask decoder only", "decoder"),
    ("deeper: decoder + LoRA on the last encoder block (slower on CPU)", "lora"),
]
PLOT_HEIGHT = 110


def draw_loss_curve(
    history: list[float], val_history: list[tuple[int, float]], width: int, height: int
) -> QPixmap:
    """A small picture of the training loss (grey, smoothed blue) and held-out loss (orange)."""
    pixmap = QPixmap(width, height)
    pixmap.fill(QColor("#262930"))
    if not history:
        return pixmap
    values = history + [v for _, v in val_history]
    low, high = min(values), max(values)
    span = high - low or 1.0
    steps = max(len(history), max((s for s, _ in val_history), default=1), 2)
    margin = 4

    def point(step: float, value: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * (step - 1) / (steps - 1)
        y = margin + (height - 2 * margin) * (1.0 - (value - low) / span)
        return x, y

    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.Antialiasing)
    smoothed, level = [], history[0]
    for value in history:
        level = 0.9 * level + 0.1 * value
        smoothed.append(level)
    for series, color in ((history, "#777777"), (smoothed, "#4fa3ff")):
        painter.setPen(QPen(QColor(color), 1.5))
        for i in range(1, len(series)):
            painter.drawLine(*_ints(point(i, series[i - 1]) + point(i + 1, series[i])))
    painter.setPen(QPen(QColor("#ff9f40"), 2))
    for i, (step, value) in enumerate(val_history):
        if i:
            painter.drawLine(*_ints(point(*val_history[i - 1]) + point(step, value)))
    painter.setPen(QColor("#dddddd"))
    painter.drawText(margin + 2, margin + 12, f"loss {history[-1]:.3f}")
    painter.end()
    return pixmap


def _ints(values: tuple[float, ...]) -> list[int]:
    return [int(round(v)) for v in values]


class FinetuneWidget(DockForm):
    """Dock widget that fine-tunes SAM on an image layer and a labels layer.

    Parameters
    ----------
    napari_viewer
        The viewer (napari injects it).
    sam_widget
        The Segment Anything widget to switch; default: found among the viewer's dock widgets.
    save_root
        Where fine-tuned models are saved (default
        :func:`~napari_segany.training.model_library.finetuned_models_folder`).
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        sam_widget: Any = None,
        save_root: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._sam_widget = sam_widget
        self.save_root = Path(save_root) if save_root is not None else None
        self.task = BackgroundTask(notify_error=self._notify_error)
        self._stop = threading.Event()
        self.history: list[float] = []
        self.val_history: list[tuple[int, float]] = []
        self.outcome: Any = None
        self._last_draw = 0.0
        self._choice: Any = None
        self._build_form()
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)

    def _build_form(self) -> None:
        self.image_box = ComboBox(label="image", choices=self._image_choices)
        self.labels_box = ComboBox(label="labels", choices=self._labels_choices)
        self.train_edit = LineEdit(
            label="train slices",
            value="all",
            tooltip="Stacks: slices to train on, e.g. '0-10, 14' or 'all'. 2D images: ignored.",
        )
        self.held_out_edit = LineEdit(
            label="held-out slices",
            value="",
            tooltip="Stacks: labelled slices kept for the before/after scores and early "
            "stopping; training slices within 2 slices of them are left out.",
        )
        self.mode_box = ComboBox(label="mode", choices=MODES, value="decoder")
        self.minutes = FloatSpinBox(label="minutes", value=10.0, min=0.1, max=600.0, step=1.0)
        self.model_picker = ModelPicker(sam_model_names(), load_sam_model, default="sam-vit-b")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop and keep best", enabled=False)
        self.use_button = PushButton(text="Use this model", enabled=False)
        self.export_button = PushButton(
            text="Export merged .pth…",
            enabled=False,
            tooltip="The full fine-tuned model in the original segment_anything layout "
            "(for segment_anything, micro-sam's custom weights, other tools)",
        )
        self.status = wrapped_label("Paint labels, choose slices, press Train.")
        self.plot = QLabel()
        self.plot.setFixedHeight(PLOT_HEIGHT)
        self.plot.setMinimumWidth(100)
        self.plot.setMaximumWidth(FORM_WIDTH - 10)
        self.table = QTableWidget(5, 2)
        self.table.setHorizontalHeaderLabels(["before", "after"])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setFixedHeight(170)
        self.add_rows(
            self.image_box,
            self.labels_box,
            self.train_edit,
            self.held_out_edit,
            self.mode_box,
            self.minutes,
        )
        self.add_section("Base model", Container(widgets=self.model_picker.widgets))
        self.add_rows(
            Container(
                widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False
            ),
            Container(
                widgets=[self.use_button, self.export_button], layout="horizontal", labels=False
            ),
            self.status,
            labels=False,
        )
        self.add_rows(self.plot, self.table)
        self.finish_form()
        self.set_bottom(self.task)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.use_button.changed.connect(self.use_model)
        self.export_button.changed.connect(self._choose_export_path)
        self.task.busy_changed.connect(self._busy_changed)
        self.plot.setPixmap(draw_loss_curve([], [], FORM_WIDTH - 10, PLOT_HEIGHT))

    # -- layers ------------------------------------------------------------------------------

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _layers_changed(self, *_: Any) -> None:
        self.image_box.reset_choices()
        self.labels_box.reset_choices()

    # -- training ----------------------------------------------------------------------------

    def train(self, *_: Any) -> None:
        """Start fine-tuning with the current rows (no-op while a job runs)."""
        from napari_segany.training.finetune_job import build_request, finetune_and_save_job
        from napari_segany.training.model_library import new_model_folder
        from napari_segany.training.settings import FinetuneSettings

        image, labels = self.image_box.value, self.labels_box.value
        if image is None or labels is None or self.task.is_running:
            self._set_status("Choose an image layer and a labels layer first.")
            return
        data = image.data[0] if image.multiscale else image.data
        choice = self.model_picker.choice
        settings = FinetuneSettings(
            mode=self.mode_box.value,
            time_budget_s=float(self.minutes.value) * 60.0,
            contrast_limits=None if image.rgb else tuple(image.contrast_limits),
        )
        try:
            request = build_request(
                np.asarray(data),
                np.asarray(labels.data),
                rgb=bool(image.rgb),
                train_slices=self.train_edit.value,
                held_out_slices=self.held_out_edit.value,
                model_source=choice.source,
                device=choice.device,
                precision=choice.precision,
                settings=settings,
                save_folder=new_model_folder(choice.source, self.save_root),
                provenance={"image_layer": image.name, "labels_layer": labels.name},
            )
        except ValueError as exc:
            self._set_status(str(exc))
            return
        self._stop.clear()
        self.history.clear()
        self.val_history.clear()
        self.outcome = None
        self.use_button.enabled = False
        self.export_button.enabled = False
        self.table.clearContents()
        self._choice = choice
        self._set_status(" ".join(request.notes) or "Training…")
        self.task.start(
            finetune_and_save_job,
            request,
            self._stop,
            model=self.model_picker.cached_model(),
            description="Fine-tuning SAM",
            on_yielded=self._progress,
            on_returned=self._finished,
        )

    def stop(self, *_: Any) -> None:
        """End training at the next step; the best state so far is scored and saved."""
        self._stop.set()
        self._set_status("Stopping: scoring and saving the best state so far…")

    def _busy_changed(self, busy: bool) -> None:
        self.train_button.enabled = not busy
        self.stop_button.enabled = busy

    def _progress(self, report: Any) -> None:
        if getattr(report, "stage", "") != "training":
            return
        if report.loss is not None:
            self.history.append(float(report.loss))
        if report.val_loss is not None:
            self.val_history.append((report.done, float(report.val_loss)))
        now = time.monotonic()
        if now - self._last_draw > 0.2 or report.val_loss is not None:
            self._last_draw = now
            self._redraw()

    def _redraw(self) -> None:
        width = max(self.plot.width(), 100)
        self.plot.setPixmap(draw_loss_curve(self.history, self.val_history, width, PLOT_HEIGHT))

    def _finished(self, outcome: Any) -> None:
        from napari_segany.training.evaluation import METRIC_NAMES

        self.outcome = outcome
        result = outcome.result
        self.model_picker.cache.put(self._choice, result.base_model)  # the next run reuses it
        self.history[:] = result.history
        self.val_history[:] = result.val_history
        self._redraw()
        before, after = result.metrics.get("before", {}), result.metrics.get("after", {})
        self.table.setVerticalHeaderLabels(list(METRIC_NAMES.values()))
        for row, key in enumerate(METRIC_NAMES):
            for col, values in enumerate((before, after)):
                if key in values:
                    item = QTableWidgetItem(f"{values[key]:.3f}")
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                    self.table.setItem(row, col, item)
        how = f"{result.steps_done} steps ({result.stopped})"
        if result.improved is None:
            text = f"Saved to {outcome.folder} after {how}. No held-out slices: not scored."
        elif result.improved:
            text = (
                f"Better than the base on the held-out slices; saved to {outcome.folder} ({how})."
            )
        else:
            text = (
                f"Not better than the base model on the held-out slices, so it does not replace "
                f"it; saved anyway to {outcome.folder} ({how})."
            )
        self.use_button.enabled = True
        self.export_button.enabled = True
        self.use_button.text = "Use this model" if result.improved is not False else "Use anyway"
        self._set_status(text)

    # -- using the result --------------------------------------------------------------------

    def find_sam_widget(self) -> Any:
        """The Segment Anything widget to switch: the one given, else one docked in the viewer."""
        if self._sam_widget is not None:
            return self._sam_widget
        return find_docked(self.viewer, SamWidget)

    def use_model(self, *_: Any) -> None:
        """Switch the Segment Anything widget to the fine-tuned model."""
        if self.outcome is None:
            return
        sam = self.find_sam_widget()
        if sam is None:
            self._set_status(
                f"Open the Segment Anything widget, then press again (model: {self.outcome.folder})."
            )
            return
        sam.use_model_source(str(self.outcome.folder))
        self._set_status(f"The Segment Anything widget now uses {self.outcome.folder}.")

    def _choose_export_path(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        if self.outcome is None:
            return
        default = str(self.outcome.folder.with_suffix(".pth"))
        path, _ = QFileDialog.getSaveFileName(self, "Export merged checkpoint", default, "*.pth")
        if path:
            self._set_status(f"Exported {self.export_merged(path)}.")

    def export_merged(self, path: str | Path) -> Path:
        """Write the fine-tuned model as a full original-layout ``.pth`` checkpoint."""
        from napari_segany.training.saved_model import export_merged_checkpoint

        if self.outcome is None:
            raise RuntimeError("nothing to export: train a model first")
        return export_merged_checkpoint(self.outcome.result.model, path)

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _notify_error(self, message: str) -> None:
        self._set_status(message)
        from napari.utils.notifications import show_error

        show_error(message)
