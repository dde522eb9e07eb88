"""The Fine-tune dock widget: trains a few steps on a tiny SAM, stops keeping the best state,
shows the before/after table and switches the Segment Anything widget to the saved model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segany._napari._qt.finetune_widget import FinetuneWidget, draw_loss_curve
from napari_segany._napari._qt.sam_widget import SamWidget
from napari_segany.training.saved_model import SIDECAR_NAME
from tests.training.conftest import bright_disks

WAIT_MS = 120_000


def _stack(count=8):
    pairs = [bright_disks(seed) for seed in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _use_tiny_model(picker, folder):
    picker.set_custom_path(str(folder))
    picker.device_box.value = "cpu"
    picker.precision_box.value = "fp32"


@pytest.mark.slow
def test_train_stop_keep_best_and_use_in_the_sam_widget(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    images, labels = _stack()
    viewer.add_image(images, name="disks")
    viewer.add_labels(labels, name="painted")
    sam = SamWidget(viewer)
    viewer.window.add_dock_widget(sam, name="Segment Anything")
    _use_tiny_model(sam.model_picker, tiny_sam_hf_folder)
    widget = FinetuneWidget(viewer, save_root=tmp_path)
    viewer.window.add_dock_widget(widget, name="Fine-tune SAM")
    _use_tiny_model(widget.model_picker, tiny_sam_hf_folder)
    assert widget.image_box.value is viewer.layers["disks"]
    assert widget.labels_box.value is viewer.layers["painted"]
    widget.train_edit.value = "0-4"
    widget.held_out_edit.value = "6, 7"
    widget.minutes.value = 30.0  # far more than the test waits: the stop button ends it

    widget.train()
    qtbot.waitUntil(lambda: len(widget.history) >= 8, timeout=WAIT_MS)
    assert widget.stop_button.enabled and not widget.train_button.enabled
    widget.stop()
    qtbot.waitUntil(lambda: widget.outcome is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)

    result = widget.outcome.result
    assert result.stopped == "cancelled"
    assert 8 <= result.steps_done < 1000
    folder = widget.outcome.folder
    assert folder.parent == tmp_path
    sidecar = json.loads((folder / SIDECAR_NAME).read_text())
    # Slice 4 is within 2 slices of held-out slice 6, so it is not trained on.
    assert sidecar["labels"]["train_slices"] == [0, 1, 2, 3]
    assert sidecar["labels"]["held_out_slices"] == [6, 7]
    assert sidecar["labels"]["image_layer"] == "disks"
    # Before/after table filled, status says whether it is better.
    assert widget.table.item(0, 0) is not None and widget.table.item(0, 1) is not None
    assert float(widget.table.item(0, 1).text()) == round(result.metrics["after"]["box_iou"], 3)
    assert ("Better" in widget.status.value) == bool(result.improved)
    assert not widget.plot.pixmap().isNull()
    # Layers were not touched.
    np.testing.assert_array_equal(viewer.layers["painted"].data, labels)

    assert widget.use_button.enabled
    widget.use_model()
    assert sam.model_picker.choice.source == str(folder)
    assert str(folder) in widget.status.value
    exported = widget.export_merged(tmp_path / "merged.pth")
    assert exported.is_file() and widget.export_button.enabled
    # The base model stays loaded for the next run.
    assert widget.model_picker.cached_model() is result.base_model

    # Saved models are listed in a new SAM widget's model box.
    monkeypatch.setenv("NAPARI_SEGANY_FINETUNED_DIR", str(tmp_path))
    fresh = SamWidget(viewer)
    assert str(folder) in fresh.model_picker.model_box.choices
    fresh.use_model_source(str(folder))
    assert fresh.model_picker.model_box.value == str(folder)


def test_a_2d_image_trains_and_the_cancel_button_discards_the_run(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tmp_path
):
    viewer = make_napari_viewer()
    image, labels = bright_disks(3)
    viewer.add_image(image, name="one")
    viewer.add_labels(labels, name="labels")
    widget = FinetuneWidget(viewer, save_root=tmp_path)
    _use_tiny_model(widget.model_picker, tiny_sam_hf_folder)
    widget.minutes.value = 30.0
    widget.train()
    qtbot.waitUntil(lambda: len(widget.history) >= 3, timeout=WAIT_MS)
    widget.task.cancel()
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert widget.outcome is None
    assert list(tmp_path.iterdir()) == []
    widget.use_model()  # nothing to use: no error


def test_loss_curve_pixmap():
    pixmap = draw_loss_curve([1.0, 0.8, 0.9, 0.5], [(2, 0.9), (4, 0.7)], 200, 80)
    assert (pixmap.width(), pixmap.height()) == (200, 80)
    image = pixmap.toImage()
    colours = {image.pixel(x, y) for x in range(0, 200, 4) for y in range(0, 80, 4)}
    assert len(colours) > 2
