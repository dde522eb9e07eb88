"""The text-prompt section of the SAM widget in a real viewer (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")
pytestmark = pytest.mark.slow  # a viewer and two tiny models per test (about 20 s each here)

WAIT_MS = 120_000


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def errors(seen):
    return [str(n.message) for n in seen if str(n.severity).lower().endswith("error")]


def open_widget(viewer, sam_folder, detector_folder):
    from napari_segany._napari._qt.sam_widget import SamWidget
    from napari_segany._napari._qt.text_prompt_section import mount_text_prompt_section

    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    widget.model_picker.set_custom_path(str(sam_folder))
    widget.model_picker.device_box.value = "cpu"
    widget.model_picker.precision_box.value = "fp32"
    section = getattr(widget, "text_prompt", None) or mount_text_prompt_section(widget)
    section.picker.set_custom_path(str(detector_folder))
    section.picker.device_box.value = "cpu"
    section.picker.precision_box.value = "fp32"
    section.box_threshold.value = 0.0
    section.text_threshold.value = 0.0
    section.max_objects.value = 3
    return widget, section


def _data(shape):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, shape).astype(np.float32)
    data[..., 10:30, 20:45] += 100
    return data


def test_find_shows_rectangles_and_commit_writes_phrases(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tiny_folder, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(_data((48, 64)), name="cells", scale=(0.5, 0.5))
    widget, section = open_widget(viewer, tiny_sam_hf_folder, tiny_folder)
    section.text.value = "cell. nucleus."
    section.find()
    qtbot.waitUntil(
        lambda: not widget.task.is_running and len(widget.shapes_layer.data) > 0, timeout=WAIT_MS
    )
    shapes = widget.shapes_layer
    assert len(shapes.data) == 3
    assert all(isinstance(p, str) and p for p in shapes.features["phrase"])
    assert "phrase" in str(shapes.text.string)
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    shapes.selected_data = {0}
    shapes.remove_selected()  # the user deletes one box before committing
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    section.commit()
    qtbot.waitUntil(
        lambda: widget.is_idle and section.message.value.startswith("committed"), timeout=WAIT_MS
    )
    labels = widget.output_box.value
    assert labels is not None and labels.data.any()
    present = sorted(int(v) for v in np.unique(labels.data) if v)
    assert 1 <= len(present) <= 2
    assert sorted(labels.features["index"].tolist()) == present
    assert all(p for p in labels.features["phrase"])
    assert len(widget.shapes_layer.data) == 0  # prompts cleared after the commit
    assert not errors(notifications)


def test_no_detection_and_bad_text_change_nothing(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tiny_folder, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(_data((48, 64)), name="cells")
    widget, section = open_widget(viewer, tiny_sam_hf_folder, tiny_folder)
    section.text.value = "   "
    section.find()
    assert any("empty" in e for e in errors(notifications))
    section.text.value = "cell."
    section.box_threshold.value = 1.0
    section.find()
    qtbot.waitUntil(
        lambda: widget.is_idle and "nothing matched" in section.message.value, timeout=WAIT_MS
    )
    assert widget.shapes_layer is None or len(widget.shapes_layer.data) == 0
    assert any("nothing matched" in e for e in errors(notifications))
    from napari.layers import Labels

    assert not any(isinstance(layer, Labels) and layer.data.any() for layer in viewer.layers)


def test_find_and_commit_on_every_slice(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tiny_folder, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(_data((2, 48, 64)), name="stack")
    widget, section = open_widget(viewer, tiny_sam_hf_folder, tiny_folder)
    section.text.value = "cell."
    section.max_objects.value = 2
    section.find_and_commit_every_slice()
    qtbot.waitUntil(lambda: widget.session.has_model, timeout=WAIT_MS)  # loads SAM first
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    if not section.message.value.startswith("committed"):
        section.find_and_commit_every_slice()
    qtbot.waitUntil(
        lambda: widget.is_idle and section.message.value.startswith("committed"), timeout=WAIT_MS
    )
    labels = widget.output_box.value
    assert labels.data[0].any() and labels.data[1].any()
    assert set(labels.features["index"]) == {int(v) for v in np.unique(labels.data) if v}
    assert not errors(notifications)
