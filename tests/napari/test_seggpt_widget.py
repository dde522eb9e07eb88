"""The SegGPT dock widget in a real viewer, with the tiny random SegGPT loaded from a folder.

Run under Xvfb: ``xvfb-run -a python3 -m pytest tests/test_seggpt_widget.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segany._napari._qt import seggpt_widget as widget_module
from napari_segany._napari._qt.seggpt_widget import (
    CURRENT_SLICE,
    NEW_LAYER,
    SLICE_RANGE,
    SegGptWidget,
)
from napari_segany._napari.sample_data import blobs_stack
from napari_segany._napari.seggpt_layers import seggpt_predictor
from napari_segany.seggpt.stack_job import parse_slice_list

WAIT_MS = 60_000


class Notifications:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.infos: list[str] = []
        self.warnings: list[str] = []


@pytest.fixture
def notes(monkeypatch) -> Notifications:
    notes = Notifications()
    monkeypatch.setattr(widget_module, "show_error", notes.errors.append)
    monkeypatch.setattr(widget_module, "show_info", notes.infos.append)
    monkeypatch.setattr(widget_module, "show_warning", notes.warnings.append)
    return notes


@pytest.fixture
def viewer_and_widget(make_napari_viewer, tiny_seggpt_hf_folder):
    viewer = make_napari_viewer()
    widget = SegGptWidget(viewer)
    widget.model_picker.set_custom_path(str(tiny_seggpt_hf_folder))
    widget.model_picker.device_box.value = "cpu"
    widget.model_picker.precision_box.value = "fp32"
    return viewer, widget


def run_and_wait(qtbot, widget: SegGptWidget, notes: Notifications) -> None:
    count = len(notes.infos) + len(notes.errors)
    widget.run()
    qtbot.waitUntil(
        lambda: not widget.task.is_running and len(notes.infos) + len(notes.errors) > count,
        timeout=WAIT_MS,
    )


def stack_with_painted_slice(depth=5, size=32, painted=2):
    image, truth = blobs_stack((depth, size, size))
    labels = np.zeros_like(truth)
    labels[painted] = truth[painted]
    return image, labels


def choose(widget, *, target, labels, prompt_image=None, output=None):
    widget.reset_choices()
    widget.target_box.value = target
    widget.prompt_labels_box.value = labels
    if prompt_image is not None:
        widget.prompt_image_box.value = prompt_image
    widget.output_box.value = NEW_LAYER if output is None else output


def test_2d_reference_image_prompts_a_new_placed_labels_layer(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    reference, truth = blobs_stack((1, 40, 40))
    ref_layer = viewer.add_image(reference[0], name="reference")
    ref_labels = viewer.add_labels(truth[0], name="reference labels")
    rng = np.random.default_rng(0)
    target = viewer.add_image(
        rng.integers(0, 255, (36, 44, 3), dtype=np.uint8),
        name="target",
        rgb=True,
        scale=(0.5, 2.0),
        translate=(10.0, -5.0),
    )
    choose(widget, target=target, labels=ref_labels, prompt_image=ref_layer)
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    output = viewer.layers["target SegGPT"]
    assert output.data.shape == (36, 44)
    np.testing.assert_allclose(output.scale, target.scale)
    np.testing.assert_allclose(output.translate, target.translate)
    assert output.data.any()
    assert set(np.unique(output.data)) <= {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(ref_labels.data, truth[0])  # prompts untouched


def test_3d_all_slices_into_the_painted_layer_keeps_painted_slices(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=5, painted=2)
    before = labels.copy()
    image_layer = viewer.add_image(image, name="stack", scale=(2.0, 0.5, 0.5))
    labels_layer = viewer.add_labels(labels, name="painted", scale=(2.0, 0.5, 0.5))
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    data = labels_layer.data
    np.testing.assert_array_equal(data[2], before[2])  # the painted prompt slice, untouched
    for z in (0, 1, 3, 4):
        assert data[z].any(), z
    assert "segmented 4 slice(s)" in notes.infos[-1]
    # The whole run is one undo step.
    labels_layer.undo()
    np.testing.assert_array_equal(labels_layer.data, before)
    labels_layer.redo()
    assert all(labels_layer.data[z].any() for z in (0, 1, 3, 4))


def test_a_run_too_large_for_the_undo_history_is_written_without_it(
    qtbot, viewer_and_widget, notes, monkeypatch
):
    viewer, widget = viewer_and_widget
    monkeypatch.setattr(widget_module, "run_fits_undo", lambda plan: False)
    image, labels = stack_with_painted_slice(depth=3, painted=0)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    run_and_wait(qtbot, widget, notes)
    result = labels_layer.data.copy()
    assert result[1].any() and result[2].any()
    labels_layer.undo()  # nothing recorded: nothing to undo
    np.testing.assert_array_equal(labels_layer.data, result)


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_labels_in_the_output_survive_unless_overwrite(
    qtbot, viewer_and_widget, notes, overwrite
):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=3, painted=0)
    existing = np.zeros_like(labels)
    existing[2, :4, :4] = 99
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    output = viewer.add_labels(existing, name="existing")
    choose(widget, target=image_layer, labels=labels_layer, output=output)
    widget.overwrite_box.value = overwrite
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    assert not output.data[0].any()  # the painted slice is a prompt, not a target
    assert output.data[1].any()
    assert (output.data[2, :4, :4] == 99).all() != overwrite
    np.testing.assert_array_equal(labels_layer.data, labels)


def test_new_layer_from_target_labels_has_full_shape_and_painted_slice(
    qtbot, viewer_and_widget, notes
):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=4, painted=0)
    image_layer = viewer.add_image(image, name="stack", translate=(3.0, 1.0, 2.0))
    labels_layer = viewer.add_labels(labels, name="painted", translate=(3.0, 1.0, 2.0))
    choose(widget, target=image_layer, labels=labels_layer)
    run_and_wait(qtbot, widget, notes)
    output = viewer.layers["stack SegGPT"]
    assert output.data.shape == image.shape
    np.testing.assert_allclose(output.translate, image_layer.translate)
    np.testing.assert_array_equal(output.data[0], labels[0])
    assert all(output.data[z].any() for z in (1, 2, 3))
    np.testing.assert_array_equal(labels_layer.data, labels)  # painted layer untouched


def test_current_slice_and_slice_range(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=6, painted=0)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    viewer.dims.set_current_step(0, 3)
    widget.slices_box.value = CURRENT_SLICE
    run_and_wait(qtbot, widget, notes)
    assert [z for z in range(6) if labels_layer.data[z].any()] == [0, 3]
    widget.slices_box.value = SLICE_RANGE
    assert widget.range_stop.max == 5
    widget.range_start.value, widget.range_stop.value = 4, 5
    run_and_wait(qtbot, widget, notes)
    assert [z for z in range(6) if labels_layer.data[z].any()] == [0, 3, 4, 5]


class SlowRecordingPredictor:
    """Wraps the real predictor: records prompt counts and takes ``delay`` s per target."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay
        self.prompt_counts: list[int] = []
        self.predicted = 0

    def set_prompts(self, images, labels, num_labels=None):
        self.prompt_counts.append(len(images))
        self.inner.set_prompts(images, labels, num_labels=num_labels)

    def predict(self, image, *, return_confidence=False):
        time.sleep(self.delay)
        self.predicted += 1
        return self.inner.predict(image, return_confidence=return_confidence)


def install_wrapper(monkeypatch, delay=0.0) -> list[SlowRecordingPredictor]:
    made: list[SlowRecordingPredictor] = []

    def wrapped(model, *args):
        made.append(SlowRecordingPredictor(seggpt_predictor(model, *args), delay))
        return made[-1]

    monkeypatch.setattr(widget_module, "seggpt_predictor", wrapped)
    return made


def test_cancel_mid_stack_keeps_done_slices_and_leaves_the_rest(
    qtbot, viewer_and_widget, notes, monkeypatch
):
    viewer, widget = viewer_and_widget
    made = install_wrapper(monkeypatch, delay=0.4)
    image, labels = stack_with_painted_slice(depth=10, painted=0)
    labels[9, 5:8, 5:8] = 7  # the untouched slices must stay exactly as they were
    before = labels.copy()
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    widget.run()
    qtbot.waitUntil(lambda: widget._run is not None and widget._run.written >= 2, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    written = widget._run.keys
    assert 2 <= len(written) < 9
    assert made[0].predicted < 9
    for z in range(10):
        if (z,) in written:
            assert labels_layer.data[z].any()
        else:
            np.testing.assert_array_equal(labels_layer.data[z], before[z])
    assert any("cancelled" in message for message in notes.infos)
    assert not notes.errors


def test_time_mode_uses_the_previous_frame_as_an_extra_prompt(
    qtbot, viewer_and_widget, notes, monkeypatch
):
    viewer, widget = viewer_and_widget
    made = install_wrapper(monkeypatch)
    image, labels = stack_with_painted_slice(depth=5, painted=0)
    image_layer = viewer.add_image(image, name="movie")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    widget.video_box.value = True
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    # Frame 1 follows the painted frame 0 (already a prompt); frames 2..4 add their predecessor.
    assert made[0].prompt_counts == [1, 2, 2, 2]
    assert all(labels_layer.data[t].any() for t in range(5))


def test_4d_time_series_of_stacks(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    image, _ = blobs_stack((6, 24, 24))
    image = image.reshape(2, 3, 24, 24)
    labels = np.zeros(image.shape, np.int32)
    _, truth = blobs_stack((6, 24, 24))
    labels[0, 1] = truth[1]
    image_layer = viewer.add_image(image, name="4d")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    np.testing.assert_array_equal(labels_layer.data[0, 1], truth[1])
    assert all(labels_layer.data[t, z].any() for t in range(2) for z in range(3))


class PromptRecorder(SlowRecordingPredictor):
    """Also records, per ``set_prompts`` call, the foreground mask of every prompt's labels."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.prompt_masks: list[list[np.ndarray]] = []

    def set_prompts(self, images, labels, num_labels=None):
        self.prompt_masks.append([np.asarray(label) != 0 for label in labels])
        super().set_prompts(images, labels, num_labels=num_labels)


def test_video_mode_follows_the_chosen_time_axis_of_a_4d_stack(
    qtbot, viewer_and_widget, notes, monkeypatch
):
    viewer, widget = viewer_and_widget
    made: list[PromptRecorder] = []

    def wrapped(model, *args):
        made.append(PromptRecorder(seggpt_predictor(model, *args)))
        return made[-1]

    monkeypatch.setattr(widget_module, "seggpt_predictor", wrapped)
    flat, truth = blobs_stack((6, 24, 24))
    image = flat.reshape(2, 3, 24, 24)  # T x Z x Y x X
    labels = np.zeros(image.shape, np.int32)
    labels[0, 1] = truth[1]  # painted: t=0, z=1
    image_layer = viewer.add_image(image, name="4d")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    assert not widget.time_axis_box.enabled  # only with video mode
    widget.video_box.value = True
    assert widget.time_axis_box.enabled
    assert widget.time_axis_box.choices == (0, 1) and widget.time_axis_box.value == 0
    # The default (axis 0 = T): each Z is a track; z=1 starts at the painted frame.
    assert widget.plan().plan == [
        ((0, 0), None),
        ((0, 2), None),
        ((1, 0), (0, 0)),
        ((1, 1), (0, 1)),
        ((1, 2), (0, 2)),
    ]
    widget.time_axis_box.value = 1  # frames follow each other along Z instead
    run_and_wait(qtbot, widget, notes)
    assert not notes.errors, notes.errors
    # Along Z: t=0 grows out of its painted z=1; t=1 has no painted frame and runs from z=0.
    assert widget._run.keys == [(1, 0), (0, 0), (0, 2), (1, 1), (1, 2)]
    # The first three share the painted prompt (one set_prompts); (1, 1) and (1, 2) add a frame.
    assert made[0].prompt_counts == [1, 2, 2]
    # That extra prompt is the prediction of the Z neighbour: (1, 0) for (1, 1), (1, 1) for (1, 2).
    out = labels_layer.data
    assert not np.array_equal(out[1, 0] != 0, out[0, 1] != 0)  # not the T neighbour's
    np.testing.assert_array_equal(made[0].prompt_masks[1][-1], out[1, 0] != 0)
    np.testing.assert_array_equal(made[0].prompt_masks[2][-1], out[1, 1] != 0)
    assert all(out[t, z].any() for t in range(2) for z in range(3))
    # A 3D stack has one slice axis: nothing to choose.
    stack_layer = viewer.add_image(flat, name="3d")
    widget.target_box.value = stack_layer
    assert widget.time_axis_box.choices == (0,) and not widget.time_axis_box.enabled


def assert_nothing_changed(viewer, snapshot, notes, match):
    assert notes.errors and match in notes.errors[-1], notes.errors
    assert [layer.name for layer in viewer.layers] == list(snapshot)
    for name, data in snapshot.items():
        np.testing.assert_array_equal(viewer.layers[name].data, data)


def snapshot_of(viewer):
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}


def test_empty_prompt_labels_notify_and_change_nothing(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    image, _ = blobs_stack((3, 24, 24))
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(np.zeros(image.shape, np.int32), name="empty")
    choose(widget, target=image_layer, labels=labels_layer)
    snapshot = snapshot_of(viewer)
    widget.run()
    assert not widget.task.is_running
    assert_nothing_changed(viewer, snapshot, notes, "prompt labels are empty")


def test_prompt_image_and_labels_shape_mismatch_notify_and_change_nothing(
    qtbot, viewer_and_widget, notes
):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=3, size=24, painted=1)
    image_layer = viewer.add_image(image, name="stack")
    reference = viewer.add_image(np.zeros((20, 20), np.uint8), name="reference")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, prompt_image=reference)
    snapshot = snapshot_of(viewer)
    widget.run()
    assert_nothing_changed(viewer, snapshot, notes, "do not match")


def test_output_of_the_wrong_shape_notifies_and_changes_nothing(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=3, size=24, painted=1)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    other = viewer.add_labels(np.zeros((3, 10, 10), np.int32), name="other")
    choose(widget, target=image_layer, labels=labels_layer, output=other)
    snapshot = snapshot_of(viewer)
    widget.run()
    assert_nothing_changed(viewer, snapshot, notes, "needs (3, 24, 24)")


def test_bad_model_path_notifies_and_changes_nothing(qtbot, viewer_and_widget, notes, tmp_path):
    viewer, widget = viewer_and_widget
    image, labels = stack_with_painted_slice(depth=3, size=24, painted=1)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer)
    widget.model_picker.set_custom_path(str(tmp_path / "no_such_model"))
    snapshot = snapshot_of(viewer)
    widget.run()
    qtbot.waitUntil(lambda: bool(notes.errors), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert_nothing_changed(viewer, snapshot, notes, "Loading")


def test_parse_slice_list():
    assert parse_slice_list("") is None
    assert parse_slice_list("0, 8 12-14") == [0, 8, 12, 13, 14]
    with pytest.raises(ValueError, match="cannot read"):
        parse_slice_list("a-b")


def test_widget_is_in_the_manifest_and_the_segment_menu():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-segany")
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert widgets["In-context segmentation (SegGPT)"] == "napari-segany.seggpt_widget"
    command = manager.get_command("napari-segany.seggpt_widget")
    assert command.python_name == "napari_segany._napari._qt.seggpt_widget:SegGptWidget"
    from npe2.manifest.utils import import_python_name

    assert import_python_name(command.python_name) is SegGptWidget
    menu = [item.command for item in manifest.contributions.menus["napari/layers/segment"]]
    assert "napari-segany.seggpt_widget" in menu


def test_removing_the_output_layer_mid_run_stops_cleanly(
    qtbot, viewer_and_widget, notes, monkeypatch
):
    viewer, widget = viewer_and_widget
    install_wrapper(monkeypatch, delay=0.3)
    image, labels = stack_with_painted_slice(depth=8, painted=0)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer)
    widget.run()
    qtbot.waitUntil(lambda: widget._run is not None and widget._run.written >= 1, timeout=WAIT_MS)
    viewer.layers.remove(widget._run.output)
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert any("was removed" in message for message in notes.warnings)
    assert not notes.errors
    assert widget._run.written < 7


def test_on_the_cpu_slices_go_one_at_a_time(qtbot, viewer_and_widget, notes, monkeypatch):
    viewer, widget = viewer_and_widget
    batch_sizes = []

    def spying_predictor(model, *args):
        predictor = seggpt_predictor(model, *args)
        original = predictor.iter_predictions

        def spy(images, **kwargs):
            batch_sizes.append(kwargs.get("batch_size"))
            return original(images, **kwargs)

        predictor.iter_predictions = spy
        return predictor

    monkeypatch.setattr(widget_module, "seggpt_predictor", spying_predictor)
    image, labels = stack_with_painted_slice(depth=4, painted=0)
    image_layer = viewer.add_image(image, name="stack")
    labels_layer = viewer.add_labels(labels, name="painted")
    choose(widget, target=image_layer, labels=labels_layer, output=labels_layer)
    run_and_wait(qtbot, widget, notes)
    assert batch_sizes == [1]
    assert all(labels_layer.data[z].any() for z in range(4))


def test_napari_opens_the_widget_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 16, 16)), name="stack")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-segany", "In-context segmentation (SegGPT)"
    )
    assert isinstance(widget, SegGptWidget)
    assert widget.target_box.value is viewer.layers["stack"]
    viewer.add_labels(np.zeros((2, 16, 16), np.int32), name="painted")
    assert widget.prompt_labels_box.value is viewer.layers["painted"]  # choices follow the layers
