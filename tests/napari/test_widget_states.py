"""Honest states of the widgets (issue 13) and the GUI half of issue 9, one test per case."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segany._napari import layer_io
from napari_segany._napari._qt import sam_stack_actions
from napari_segany._napari._qt.seggpt_widget import NEW_LAYER, SegGptWidget
from napari_segany._napari.sam_prompt_layers import SAM_OUTPUT_ROLE, role_of
from tests.napari.test_sam_widget import (
    WAIT_MS,
    add_point,
    errors,
    make_stack,
    open_widget,
    show_slice,
    wait_for_preview,
)


def committed_object(viewer, qtbot, widget, image, z=0, at=(20, 20)):
    show_slice(viewer, image, z)
    add_point(widget, image, (z, *at))
    wait_for_preview(qtbot, widget)
    return widget.commit()


def test_commit_that_writes_nothing_says_so_and_keeps_the_next_id(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    labels.data[0] = 7  # everything on slice 0 is already labelled
    labels.refresh()
    show_slice(viewer, image, 0)
    add_point(widget, image, (0, 20, 20))
    wait_for_preview(qtbot, widget)
    assert widget.commit() == []
    assert "nothing written" in widget.status.value
    assert (labels.data[0] == 7).all()
    assert len(widget.points_layer.data) == 1  # prompts kept: tick overwrite and commit again
    widget.overwrite.value = True
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert widget.commit() == [8]  # the id was not used up by the empty commit


def test_label_to_propagate_is_the_last_commit_and_is_dropped_after_undo(
    make_napari_viewer,
    qtbot,
    tiny_sam_hf_folder,
    notifications,
):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    (label,) = committed_object(viewer, qtbot, widget, image)
    assert widget.propagate_label.value == label and widget.refine_label.value == 0
    labels.undo()
    assert widget.propagate_label.value == 0  # no longer points at a label that is gone
    assert "gone" in widget.status.value
    widget.propagate_label.value = label  # typed again: refused with a clear message
    widget.propagate()
    assert "not on the shown slice" in errors(notifications)[-1]
    assert not widget.task.is_running


def test_seggpt_widget_hides_sam_layers_and_defaults_to_the_sam_output(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer)
    viewer.add_labels(np.zeros((5, 40, 48), np.int32), name="painted by hand")
    seggpt = SegGptWidget(viewer)
    sam = open_widget(viewer, tiny_sam_hf_folder)
    sam.output_box.value = None  # new layer
    committed_object(viewer, qtbot, sam, image)
    offered = {layer.name for _name, layer in seggpt._labels_choices()}
    assert not offered & {"SAM points", "SAM boxes", "SAM preview"}
    (output,) = [layer for layer in viewer.layers if layer.name == "SAM labels"]
    assert role_of(output) == SAM_OUTPUT_ROLE
    assert seggpt.prompt_labels_box.value is output
    outputs = {name for name, _layer in seggpt._output_choices()}
    assert "SAM preview" not in outputs


def test_propagate_with_seggpt_hands_the_sam_labels_over(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, tiny_seggpt_hf_folder
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer, shape=(3, 40, 48))
    seggpt = SegGptWidget(viewer)
    viewer.window.add_dock_widget(seggpt, name="In-context segmentation (SegGPT)")
    seggpt.model_picker.set_custom_path(str(tiny_seggpt_hf_folder))
    seggpt.model_picker.device_box.value = "cpu"
    seggpt.model_picker.precision_box.value = "fp32"
    sam = open_widget(viewer, tiny_sam_hf_folder)
    committed_object(viewer, qtbot, sam, image, z=1)
    sam_labels = sam.output_box.value
    assert sam.propagate_with_seggpt() is seggpt
    assert seggpt.target_box.value is image and seggpt.prompt_labels_box.value is sam_labels
    qtbot.waitUntil(lambda: not seggpt.task.is_running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "segmented" in seggpt.status.value, timeout=WAIT_MS)
    (result,) = [layer for layer in viewer.layers if layer.name.endswith("SegGPT")]
    assert result.data.shape == (3, 40, 48) and result.data[0].any()


def test_cancelled_embedding_says_cancelled_and_a_new_run_clears_the_error(
    make_napari_viewer,
    qtbot,
    tiny_sam_hf_folder,
    notifications,
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    committed_object(viewer, qtbot, widget, image)
    widget.propagate_label.value = 999
    widget.propagate()  # an error, shown in the status line
    assert "999" in widget.status.value
    slow_blocks(widget, seconds=0.5)  # 3 blocks: 1.5 s in all
    show_slice(viewer, image, 3)
    add_point(widget, image, (3, 20, 20))
    qtbot.waitUntil(lambda: widget.task.is_running, timeout=WAIT_MS)
    assert "999" not in widget.status.value  # the new run cleared the old error
    time.sleep(0.1)
    started = time.perf_counter()
    widget.task.cancel()
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert time.perf_counter() - started < 1.1  # between two encoder blocks, not at the end
    assert "cancelled" in widget.status.value


class InterruptingPredictor:
    """A SegGPT predictor (one slice per call) that raises KeyboardInterrupt on call ``fail_at``."""

    def __init__(self, predictor, fail_at):
        self.predictor = predictor
        self.fail_at = fail_at
        self.calls = []

    def set_prompts(self, *args, **kwargs):
        return self.predictor.set_prompts(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self.calls.append(1)
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        return self.predictor.predict(*args, **kwargs)


def slow_blocks(widget, seconds):
    """Make every image-encoder block of the widget's model take ``seconds``."""
    encoder = widget.session.model.image_encoder
    for block in encoder.blocks:
        original = block.forward

        def slow(*args, _original=original, **kwargs):
            time.sleep(seconds)
            return _original(*args, **kwargs)

        block.forward = slow


def test_failed_embedding_is_not_retried_until_the_user_changes_something(
    make_napari_viewer,
    qtbot,
    tiny_sam_hf_folder,
    notifications,
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    committed_object(viewer, qtbot, widget, image)
    calls = []

    def failing(*_args, **_kwargs):
        calls.append(1)
        raise MemoryError("no room for the embedding")

    widget.session._embedder.set_image = failing
    show_slice(viewer, image, 2)
    add_point(widget, image, (2, 20, 20))
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    qtbot.wait(800)
    assert len(calls) == 1 and len(errors(notifications)) == 1
    assert "out of memory" in errors(notifications)[0].lower()
    add_point(widget, image, (2, 25, 25))  # a user change: one more try
    qtbot.waitUntil(lambda: len(calls) == 2, timeout=WAIT_MS)
    qtbot.wait(300)
    assert len(calls) == 2


def test_base_exception_in_a_job_leaves_the_task_usable(qtbot):
    from napari_segany._napari._qt.background_task import BackgroundTask

    task = BackgroundTask()
    qtbot.addWidget(task)
    failures, finished = [], []

    def interrupted():
        yield 0, 1
        raise KeyboardInterrupt

    task.start(
        interrupted,
        description="Interrupted",
        on_error=failures.append,
        on_finished=lambda: finished.append(1),
    )
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    assert not task.is_running and isinstance(failures[0].__cause__, KeyboardInterrupt)
    task.start(interrupted, description="again", on_error=failures.append)  # usable again
    qtbot.waitUntil(lambda: not task.is_running, timeout=5000)


def test_base_exception_in_a_seggpt_run_restores_undo_on_the_output(
    make_napari_viewer, qtbot, tiny_seggpt_hf_folder, monkeypatch
):
    from napari_segany._napari._qt import seggpt_widget as widget_module
    from napari_segany._napari.sample_data import blobs_stack

    viewer = make_napari_viewer()
    stack, truth = blobs_stack((4, 32, 32))
    painted = np.zeros_like(truth)
    painted[0] = truth[0]
    image = viewer.add_image(stack)
    prompt = viewer.add_labels(painted, name="painted")
    output = viewer.add_labels(np.zeros_like(truth), name="out")
    widget = SegGptWidget(viewer)
    widget.model_picker.set_custom_path(str(tiny_seggpt_hf_folder))
    widget.model_picker.device_box.value = "cpu"
    original = widget_module.seggpt_predictor
    made = []

    def interrupting(model, *args, **kwargs):
        made.append(InterruptingPredictor(original(model, *args, **kwargs), fail_at=2))
        return made[-1]

    monkeypatch.setattr(widget_module, "seggpt_predictor", interrupting)
    widget.reset_choices()
    widget.target_box.value = image
    widget.prompt_labels_box.value = prompt
    widget.output_box.value = output
    widget.run()
    qtbot.waitUntil(lambda: widget._run is not None and not widget.task.is_running, timeout=WAIT_MS)
    assert len(made[0].calls) == 2 and widget._run.written == 1
    assert output._block_history is False  # undo works on the layer again
    assert not widget.task.is_running and widget.run_button.enabled
    assert "KeyboardInterrupt" in widget.status.value


def test_removing_the_output_during_sam_propagation_stops_and_writes_nothing(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer, shape=(8, 40, 48))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    committed_object(viewer, qtbot, widget, image, z=4)
    before = labels.data.copy()
    widget.advanced.min_score.value = 0.0
    widget.advanced.min_area.value = 1
    slow_blocks(widget, seconds=0.02)
    widget.session.cache.clear()
    widget.propagate()
    qtbot.waitUntil(lambda: widget.task.is_running, timeout=WAIT_MS)
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert "removed" in widget.status.value
    np.testing.assert_array_equal(labels.data, before)


def test_large_commit_runs_off_the_gui_thread_and_says_when_it_cannot_be_undone(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, monkeypatch
):
    monkeypatch.setattr(sam_stack_actions, "SYNC_COMMIT_PIXELS", 100)
    monkeypatch.setattr(layer_io, "UNDO_PIXEL_BUDGET", 10)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (40, 48)).astype(np.uint8))
    labels = viewer.add_labels(np.zeros((40, 48), np.int32))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    add_point(widget, image, (20, 20))
    wait_for_preview(qtbot, widget)
    assert widget.commit() == []  # started in the background
    assert widget.task.is_running or "committed" in widget.status.value
    qtbot.waitUntil(lambda: "committed" in widget.status.value, timeout=WAIT_MS)
    assert "undo" in widget.status.value and (labels.data == 1).any()
    assert widget.propagate_label.value == 1


def test_uint8_labels_holding_255_are_promoted(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (40, 48)).astype(np.uint8))
    labels = viewer.add_labels(np.zeros((40, 48), np.uint8))
    labels.data[0:2, 0:2] = 255
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    add_point(widget, image, (20, 20))
    wait_for_preview(qtbot, widget)
    assert widget.commit() == [256]
    assert labels.data.dtype == np.int32 and (labels.data == 256).any()
    assert (labels.data[0:2, 0:2] == 255).all()


def test_negative_prompt_feature_in_any_case_is_negative():
    from napari.layers import Points

    from napari_segany._napari.sam_layers import point_labels_of

    points = Points(
        np.zeros((4, 2)), features={"prompt": ["Negative", "positive", "NEGATIVE", " negative "]}
    )
    assert point_labels_of(points).tolist() == [0, 1, 0, 0]


def test_slice_index_out_of_range_is_a_clear_message(tiny_sam_model):
    from napari.layers import Image, Labels

    from napari_segany.scripting import propagate_label_through_stack, segment_everything_in_layer

    image = Image(np.zeros((3, 16, 16), np.uint8))
    labels = Labels(np.zeros((3, 16, 16), np.int32))
    with pytest.raises(ValueError, match=r"slice index 5 .* 0\.\.2"):
        propagate_label_through_stack(image, labels, 1, (5,), model=tiny_sam_model)
    with pytest.raises(ValueError, match="out of range"):
        segment_everything_in_layer(image, model=tiny_sam_model, slice_index=(-1,))


def test_new_seggpt_widget_output_choice_defaults_to_a_new_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegGptWidget(viewer)
    assert widget.output_box.value == NEW_LAYER


def test_failed_scripted_seggpt_run_leaves_the_output_as_before(tiny_seggpt_predictor):
    from napari.layers import Image, Labels

    from napari_segany._napari.sample_data import blobs_stack
    from napari_segany.scripting import segment_layers_with_seggpt

    stack, truth = blobs_stack((4, 24, 24))
    painted = np.zeros_like(truth)
    painted[0] = truth[0]
    image, prompt = Image(stack), Labels(painted)
    output = Labels(np.zeros_like(truth))
    output.data_setitem((np.array([3]), np.array([0]), np.array([0])), 5)  # one earlier edit
    before = output.data.copy()
    predictor = InterruptingPredictor(tiny_seggpt_predictor, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        segment_layers_with_seggpt(image, prompt, output_layer=output, model=predictor)
    assert len(predictor.calls) == 3
    np.testing.assert_array_equal(output.data, before)  # slices written before are rolled back
    assert output._block_history is False
    output.undo()  # the undo history is as before the run: the earlier edit is undone
    assert output.data[3, 0, 0] == 0 and not output.data.any()


def test_model_not_downloaded_offline_is_said_in_a_short_first_line(
    make_napari_viewer,
    qtbot,
    notifications,
    monkeypatch,
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.uint8))
    from napari_segany._napari._qt.sam_widget import SamWidget

    widget = SamWidget(viewer)
    widget.model_picker.model_box.value = "sam-vit-h"
    started = time.perf_counter()
    add_point(widget, image, (10, 10))
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    assert time.perf_counter() - started < 10  # seconds, not the 24 s of hub retries
    assert "sam-vit-h is not downloaded and there is no internet" in widget.status.value
    assert len(widget.status.value) < 120 and "\n" not in widget.status.value
    assert "hf download" in errors(notifications)[0]  # the instructions are in the details


def test_a_points_layer_with_100000_points_is_refused_at_once(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    started = time.perf_counter()
    widget.points_layer.data = np.random.default_rng(0).uniform(0, 63, (100_000, 2))
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    assert time.perf_counter() - started < 10
    assert "100000 points" in errors(notifications)[-1]
    assert not widget.task.is_running and widget._shown is None
