"""The Segment Anything dock widget in a real viewer, with a tiny random SAM from a folder."""

import time
from dataclasses import replace

import numpy as np
import pytest

from napari_segany._napari._qt.sam_widget import SamWidget

SCALE = (3.0, 0.5, 0.5)
TRANSLATE = (7.0, 2.0, -4.0)
WAIT_MS = 60_000


def errors(seen):
    return [str(n.message) for n in seen if str(n.severity).lower().endswith("error")]


def open_widget(viewer, model_path):
    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    widget.model_picker.set_custom_path(str(model_path))
    widget.model_picker.device_box.value = "cpu"
    widget.model_picker.precision_box.value = "fp32"
    return widget


def wait_for_preview(qtbot, widget):
    qtbot.waitUntil(lambda: widget.is_idle and widget._shown is not None, timeout=WAIT_MS)


def world_of(layer, data_point):
    return np.asarray(layer.data_to_world(np.asarray(data_point, float)))


def show_slice(viewer, image, z):
    viewer.dims.set_point(0, world_of(image, (z, 0, 0))[0])


def add_point(widget, image, data_point):
    """Click-equivalent: a point at an image pixel, given in the points layer's data frame."""
    world = world_of(image, data_point)
    widget.points_layer.add(np.asarray(widget.points_layer.world_to_data(world)))


def test_points_on_2d_image_commit_keeps_earlier_label(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).normal(1000, 200, (48, 64)).astype(np.float32)
    image = viewer.add_image(data, scale=SCALE[1:], translate=TRANSLATE[1:], name="cells")
    labels = viewer.add_labels(
        np.zeros((48, 64), np.int32), scale=SCALE[1:], translate=TRANSLATE[1:]
    )
    labels.data[0:3, 0:3] = 4
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    widget.overwrite.value = False
    add_point(widget, image, (20, 30))
    wait_for_preview(qtbot, widget)
    assert widget.preview_layer.data.any()
    ids = widget.commit()
    assert ids == [5]
    assert labels.data.shape == (48, 64) and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, SCALE[1:])
    np.testing.assert_allclose(labels.translate, TRANSLATE[1:])
    assert (labels.data[0:3, 0:3] == 4).all()  # the earlier label survived
    assert (labels.data == 5).any()
    assert len(widget.points_layer.data) == 0  # prompts cleared
    # napari's undo removes the object in one step
    labels.undo()
    assert set(np.unique(labels.data)) == {0, 4}
    labels.redo()
    assert (labels.data == 5).any()


def test_several_boxes_make_several_objects_in_a_new_layer(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    data = np.random.default_rng(1).integers(0, 255, (40, 56, 3)).astype(np.uint8)
    image = viewer.add_image(data, rgb=True, scale=(2.0, 2.0), translate=(5.0, 5.0))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    for r0, c0, r1, c1 in [(2, 2, 18, 20), (22, 30, 38, 54)]:
        corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
        widget.shapes_layer.add_rectangles(
            np.array([widget.shapes_layer.world_to_data(world_of(image, c)) for c in corners])
        )
    wait_for_preview(qtbot, widget)
    assert len(widget.session.predictions) == 2
    ids = widget.commit()
    assert ids == [1, 2]
    (labels,) = [layer for layer in viewer.layers if layer.name == "SAM labels"]
    assert labels.data.shape == (40, 56) and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, (2.0, 2.0))
    np.testing.assert_allclose(labels.translate, (5.0, 5.0))
    assert set(np.unique(labels.data)) - {0} <= {1, 2} and labels.data.any()
    assert len(widget.shapes_layer.data) == 0


def make_stack(viewer, shape=(5, 40, 48)):
    data = np.random.default_rng(2).integers(0, 4000, shape).astype(np.uint16)
    image = viewer.add_image(data, scale=SCALE, translate=TRANSLATE, name="stack")
    labels = viewer.add_labels(
        np.zeros(shape, np.int32), scale=SCALE, translate=TRANSLATE, name="out"
    )
    labels.data[0, 0:2, 0:2] = 1
    return image, labels


def test_3d_stack_on_a_non_zero_slice_then_propagate(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    show_slice(viewer, image, 3)
    add_point(widget, image, (3, 20, 24))
    widget.toggle_point_kind()
    add_point(widget, image, (3, 2, 40))  # a negative point
    assert widget.points_layer.features["prompt"].tolist() == ["positive", "negative"]
    wait_for_preview(qtbot, widget)
    assert widget._shown.slice_index == (3,)
    np.testing.assert_array_equal(widget._shown.prompts.point_labels, [1, 0])
    first = widget.preview_layer.data[3].copy()
    widget.next_candidate()
    assert widget.session.candidate_offset == 1
    assert not np.array_equal(first, widget.preview_layer.data[3]) or not first.any()
    ids = widget.commit()
    assert ids == [2]
    assert (labels.data[3] == 2).any() and not (labels.data[[1, 2, 4]] == 2).any()
    assert labels.data[0, 0, 0] == 1
    # propagate label 2 through the stack (permissive stop rules: the model is random)
    widget.advanced.min_score.value = 0.0
    widget.advanced.min_area.value = 1
    widget.propagate()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert "label 2 on" in widget.status.value
    reached = [z for z in range(5) if (labels.data[z] == 2).any()]
    assert 3 in reached and len(reached) > 1
    assert labels.data[0, 0, 0] == 1  # an earlier label survived
    assert not widget.preview_layer.data.any()  # the propagation preview is cleaned up
    labels.undo()  # propagation is one undo step
    assert [z for z in range(5) if (labels.data[z] == 2).any()] == [3]


def test_propagate_along_the_chosen_axis_of_a_4d_stack(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    shape = (4, 3, 32, 32)  # T x Z x Y x X
    data = np.random.default_rng(3).integers(0, 4000, shape).astype(np.uint16)
    image = viewer.add_image(data, name="movie")
    labels = viewer.add_labels(np.zeros(shape, np.int32), name="out")
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    assert widget.advanced.axis.choices == (0, 1)
    assert widget.advanced.axis.value == 1  # default: the last stack axis (Z), as before
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    add_point(widget, image, (1, 2, 16, 16))
    wait_for_preview(qtbot, widget)
    assert widget._shown.slice_index == (1, 2)
    assert widget.commit() == [1]
    widget.advanced.axis.value = 0  # propagate through time (T) instead
    widget.advanced.min_score.value = 0.0
    widget.advanced.min_area.value = 1
    widget.propagate()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert "label 1 on" in widget.status.value
    reached = {(t, z) for t in range(4) for z in range(3) if (labels.data[t, z] == 1).any()}
    assert (1, 2) in reached and len(reached) > 1
    assert {z for _, z in reached} == {2}, reached  # only the other T of the shown Z
    # a stack axis that the image lacks is refused, and nothing changes
    before = labels.data.copy()
    with pytest.raises(ValueError, match="not a stack axis"):
        widget.stack_actions.propagate(
            image, (1, 2), labels, 1, replace(widget.advanced.propagation(), axis=2)
        )
    np.testing.assert_array_equal(labels.data, before)


def slow_down_embeddings(widget, seconds, calls):
    embedder = widget.session._embedder
    original = embedder.set_image

    def slow_set_image(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(seconds)
        return original(*args, **kwargs)

    embedder.set_image = slow_set_image


def test_event_loop_keeps_running_while_embedding(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    image, _ = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    show_slice(viewer, image, 0)
    add_point(widget, image, (0, 10, 10))
    wait_for_preview(qtbot, widget)  # model loaded, first slice embedded
    calls = []
    slow_down_embeddings(widget, 1.0, calls)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    show_slice(viewer, image, 2)
    add_point(widget, image, (2, 10, 10))
    wait_for_preview(qtbot, widget)
    timer.stop()
    assert len(calls) == 1 and widget._shown.slice_index == (2,)
    during = [t for t in ticks if calls[0] <= t <= calls[0] + 1.0]
    gaps = np.diff(during)
    assert len(during) > 20, "the Qt event loop stalled during the embedding"
    assert gaps.max() < 0.1, f"largest gap {gaps.max():.3f} s"


def test_cancel_leaves_layers_unchanged(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    show_slice(viewer, image, 0)
    add_point(widget, image, (0, 20, 20))
    wait_for_preview(qtbot, widget)
    widget.commit()
    before = labels.data.copy()
    n_layers = len(viewer.layers)
    # cancel a slow embedding: no preview appears
    slow_down_embeddings(widget, 0.5, [])
    show_slice(viewer, image, 1)
    add_point(widget, image, (1, 20, 20))
    qtbot.waitUntil(
        lambda: widget.task.is_running and "embedding" in widget.task.description, timeout=WAIT_MS
    )
    widget.task.cancel_button.click()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert widget._shown is None and not widget.preview_layer.data.any()
    # cancel a propagation: nothing is written
    show_slice(viewer, image, 0)
    widget.clear_prompts()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    widget.advanced.min_score.value = 0.0
    widget.advanced.min_area.value = 1
    widget.session.cache.clear()
    widget.propagate()
    qtbot.waitUntil(lambda: widget.task.is_running, timeout=WAIT_MS)
    widget.task.cancel()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    np.testing.assert_array_equal(labels.data, before)
    assert len(viewer.layers) == n_layers


def test_bad_model_path_notifies_and_changes_nothing(
    make_napari_viewer, qtbot, notifications, tmp_path
):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer)
    before = labels.data.copy()
    widget = open_widget(viewer, tmp_path / "no_such_model.pth")
    widget.output_box.value = labels
    show_slice(viewer, image, 0)
    add_point(widget, image, (0, 20, 20))
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    message = errors(notifications)[0]
    assert "no_such_model.pth" in message and "path" in message.lower()
    np.testing.assert_array_equal(labels.data, before)
    assert widget.preview_layer is None
    # no retry loop: another prompt does not start loading the same broken path again
    add_point(widget, image, (0, 25, 25))
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert not widget.task.is_running and len(errors(notifications)) == 1
    # and errors without an image layer are notifications too
    viewer.layers.remove(image)
    widget.segment_everything()
    assert "no image layer" in errors(notifications)[-1]


def test_prompt_outside_image_is_reported(
    make_napari_viewer, qtbot, notifications, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((30, 30), np.uint8))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.points_layer.add(np.array([100.0, 5.0]))
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    assert "outside" in errors(notifications)[0]
    assert image.data.sum() == 0 and widget.preview_layer is None


def test_segment_everything_whole_stack_writes_a_new_layer(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, labels = make_stack(viewer, shape=(2, 32, 32))
    before = labels.data.copy()
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.everything.scope.value = "whole stack"
    widget.everything.points_per_side.value = 4
    widget.everything.pred_iou_thresh.value = 0.0
    widget.everything.stability_score_thresh.value = 0.0
    widget.segment_everything()  # loads the model first, then runs
    qtbot.waitUntil(
        lambda: widget.is_idle and "segment everything" in widget.status.value, timeout=WAIT_MS
    )
    (result,) = [layer for layer in viewer.layers if layer.name.startswith("SAM everything")]
    assert result.data.shape == (2, 32, 32) and result.data.dtype == np.int32
    np.testing.assert_allclose(result.scale, SCALE[:3])
    np.testing.assert_allclose(result.translate, TRANSLATE)
    ids0 = set(np.unique(result.data[0])) - {0}
    ids1 = set(np.unique(result.data[1])) - {0}
    assert ids0 and ids1 and not ids0 & ids1  # ids unique across slices
    np.testing.assert_array_equal(labels.data, before)


def test_manifest_names_the_widget_and_the_segment_menu():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segany")
    (widget,) = [w for w in manifest.contributions.widgets if w.display_name == "Segment Anything"]
    (command,) = [c for c in manifest.contributions.commands if c.id == widget.command]
    module, _, name = command.python_name.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is SamWidget
    menu = manifest.contributions.menus["napari/layers/segment"]
    assert widget.command in [item.command for item in menu]


def test_refine_label_uses_it_as_mask_prompt_and_replaces_it(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(3).integers(0, 255, (40, 40)).astype(np.uint8))
    labels = viewer.add_labels(np.zeros((40, 40), np.int32))
    labels.data[5:15, 5:15] = 3
    labels.data[30:35, 30:35] = 6
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    widget.refine_label.value = 3
    add_point(widget, image, (10, 10))
    wait_for_preview(qtbot, widget)
    assert widget._shown.prompts.mask is not None and widget._shown.prompts.mask.sum() == 100
    new_mask = widget.session.chosen_masks(widget.session.predictions)[0]
    assert widget.commit() == [3]
    assert (labels.data[30:35, 30:35] == 6).all()  # the other label is untouched
    np.testing.assert_array_equal(labels.data == 3, new_mask & (labels.data != 6))
    assert widget.refine_label.value == 0 and labels.data.max() == 6


def test_precompute_stack_then_prompts_need_no_encoder(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer, shape=(3, 32, 32))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.precompute_stack()  # loads the model, then embeds every slice
    qtbot.waitUntil(lambda: widget.is_idle and len(widget.session.cache) == 3, timeout=WAIT_MS)
    assert sorted(k.slice_index for k in widget.session.cache.keys()) == [(0,), (1,), (2,)]
    jobs = []
    widget.task.busy_changed.connect(lambda busy: busy and jobs.append(widget.task.description))
    show_slice(viewer, image, 2)
    add_point(widget, image, (2, 16, 16))
    wait_for_preview(qtbot, widget)
    assert jobs == []  # no embedding job: the preview came straight from the cache


def test_background_task_progress_errors_and_cancel(qtbot):
    from napari_segany._napari._qt.background_task import (
        BackgroundTask,
        JobFailed,
        describe_failure,
    )

    task = BackgroundTask()
    qtbot.addWidget(task)
    seen = {"yielded": [], "returned": [], "errors": [], "aborted": 0}

    def counting(n):
        for i in range(n):
            yield i + 1, n
        return "done"

    task.start(
        counting,
        4,
        description="Counting",
        on_yielded=seen["yielded"].append,
        on_returned=seen["returned"].append,
    )
    with pytest.raises(RuntimeError, match="still running"):
        task.start(counting, 1, description="again")
    qtbot.waitUntil(lambda: not task.is_running, timeout=5000)
    assert seen["yielded"] == [(1, 4), (2, 4), (3, 4), (4, 4)] and seen["returned"] == ["done"]

    def failing():
        yield 0, 1
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    task.start(failing, description="Embedding", on_error=seen["errors"].append)
    qtbot.waitUntil(lambda: not task.is_running, timeout=5000)
    (exc,) = seen["errors"]
    assert isinstance(exc, JobFailed)  # a RuntimeError is not swallowed by the worker machinery
    message = describe_failure("Embedding", exc)
    assert "out of memory" in message.lower() and "smaller model" in message

    def endless():
        while True:
            time.sleep(0.01)
            yield 0, 0

    task.start(
        endless,
        description="Endless",
        on_returned=seen["returned"].append,
        on_aborted=lambda: seen.__setitem__("aborted", 1),
    )
    task.cancel()
    qtbot.waitUntil(lambda: not task.is_running, timeout=5000)
    assert seen["aborted"] == 1 and seen["returned"] == ["done"]


def test_quick_prompt_changes_are_coalesced_into_at_most_two_decodes(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(4).integers(0, 255, (32, 32)).astype(np.uint8))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    add_point(widget, image, (5, 5))
    wait_for_preview(qtbot, widget)
    calls = []
    original = widget.session.predict
    widget.session.predict = lambda: calls.append(1) or original()
    for r, c in [(10, 10), (12, 20), (20, 12), (25, 25)]:
        add_point(widget, image, (r, c))
    wait_for_preview(qtbot, widget)
    assert 1 <= len(calls) <= 2  # the leading edge, then one decode of the latest prompts
    assert len(widget._shown.prompts.points_rc) == 5


def test_3d_display_is_refused_with_a_notification(
    make_napari_viewer, qtbot, notifications, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    image, _ = make_stack(viewer, shape=(3, 16, 16))
    widget = open_widget(viewer, tiny_sam_hf_folder)
    show_slice(viewer, image, 1)
    add_point(widget, image, (1, 8, 8))
    viewer.dims.ndisplay = 3
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    assert "2D" in errors(notifications)[-1]
    qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert widget._shown is None


def test_model_picker_choice_cache_and_background_load(qtbot, tmp_path):
    from napari_segany._napari._qt.background_task import BackgroundTask
    from napari_segany._napari._qt.model_picker import (
        CUSTOM_PATH,
        LoadedModelCache,
        ModelChoice,
        ModelPicker,
    )

    loads = []

    def loader(source, device, precision):
        loads.append((source, device, precision))
        return object()

    picker = ModelPicker(["sam-vit-b", "sam-vit-h"], loader)
    assert picker.choice == ModelChoice("sam-vit-b", "auto", "auto")
    assert not picker.path_edit.enabled
    picker.set_custom_path(str(tmp_path))
    assert picker.model_box.value == CUSTOM_PATH and picker.path_edit.enabled
    picker.precision_box.value = "bf16"
    task = BackgroundTask()
    qtbot.addWidget(task)
    ready = []
    assert picker.request_model(task, lambda model, choice: ready.append((model, choice))) is False
    qtbot.waitUntil(lambda: len(ready) == 1, timeout=5000)
    assert loads == [(str(tmp_path), "auto", "bf16")]
    # the same choice again comes from the cache, at once, without loading
    assert picker.request_model(task, lambda model, choice: ready.append((model, choice))) is True
    assert len(loads) == 1 and ready[1][0] is ready[0][0]
    picker.path_edit.value = ""
    with pytest.raises(ValueError, match="no model path"):
        picker.request_model(task, lambda *_: None)
    cache = LoadedModelCache(max_models=2)
    for name in "abc":
        cache.put(ModelChoice(name), name)
    assert len(cache) == 2 and ModelChoice("a") not in cache and cache.get(ModelChoice("c")) == "c"
