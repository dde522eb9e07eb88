"""Behaviours users rely on that a one-line change in the source would break unnoticed (issue 13)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam.interactive_session import mask_to_mask_input
from tests.napari.test_sam_widget import WAIT_MS, add_point, open_widget, wait_for_preview


def seen_by_model(image, contrast_limits):
    """The 8-bit RGB image a model gets from ``image`` and ``contrast_limits``."""
    return to_uint8_rgb(np.asarray(image), contrast_limits)


@pytest.mark.parametrize(
    ("dtype", "limits"), [(np.float32, (200.0, 900.0)), (np.uint8, (40.0, 120.0))]
)
def test_the_layers_contrast_limits_reach_sam(
    make_napari_viewer, qtbot, tiny_sam_hf_folder, dtype, limits
):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).uniform(0, 255 if dtype == np.uint8 else 1000, (40, 48))
    image = viewer.add_image(data.astype(dtype), contrast_limits=limits)
    widget = open_widget(viewer, tiny_sam_hf_folder)
    add_point(widget, image, (20, 20))
    wait_for_preview(qtbot, widget)  # loads the model
    seen = []
    original = widget.session._embedder.set_image

    def spy(rgb, *args, **kwargs):
        seen.append(np.array(rgb))
        return original(rgb, *args, **kwargs)

    widget.session._embedder.set_image = spy
    image.contrast_limits = (limits[0] + 10, limits[1] - 10)  # a contrast change: stale embedding
    widget.clear_prompts()
    add_point(widget, image, (20, 22))
    wait_for_preview(qtbot, widget)
    assert len(seen) == 1, "a contrast change must recompute the embedding"
    expected = seen_by_model(image.data, tuple(image.contrast_limits))
    np.testing.assert_array_equal(seen[0], expected)
    assert not np.array_equal(seen[0], seen_by_model(image.data, None))


class SpyingSegGpt:
    """Wraps a SegGPT predictor (one slice per call) and records what it is given."""

    def __init__(self, predictor, delay=0.0):
        self.predictor = predictor
        self.delay = delay
        self.prompt_images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.calls = 0
        self.after_stop = None

    def set_prompts(self, images, labels, num_labels=None, contrast_limits=None, **kwargs):
        for i, image in enumerate(images):
            limit = contrast_limits[i] if isinstance(contrast_limits, list) else contrast_limits
            self.prompt_images.append(seen_by_model(image, limit))
        return self.predictor.set_prompts(images, labels, num_labels, contrast_limits, **kwargs)

    def predict(self, image, *, contrast_limits=None, **kwargs):
        self.calls += 1
        time.sleep(self.delay)  # a slice takes a while, as with a real model
        self.targets.append(seen_by_model(image, contrast_limits))
        return self.predictor.predict(image, contrast_limits=contrast_limits, **kwargs)


def test_the_layers_contrast_limits_reach_seggpt(tiny_seggpt_predictor):
    from napari.layers import Image, Labels

    from napari_segany.scripting import segment_layers_with_seggpt

    rng = np.random.default_rng(0)
    stack = rng.uniform(0, 1000, (3, 24, 24)).astype(np.float32)
    painted = np.zeros((3, 24, 24), np.int32)
    painted[0, 4:12, 4:12] = 1
    image = Image(stack, contrast_limits=(300.0, 700.0))
    spy = SpyingSegGpt(tiny_seggpt_predictor)
    segment_layers_with_seggpt(image, Labels(painted), model=spy)
    np.testing.assert_array_equal(spy.prompt_images[0], seen_by_model(stack[0], (300.0, 700.0)))
    assert len(spy.targets) == 2
    np.testing.assert_array_equal(spy.targets[0], seen_by_model(stack[1], (300.0, 700.0)))
    assert not np.array_equal(spy.targets[0], seen_by_model(stack[1], None))


def test_refine_label_mask_values_reach_the_decoder(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(3).integers(0, 255, (40, 40)).astype(np.uint8))
    labels = viewer.add_labels(np.zeros((40, 40), np.int32))
    labels.data[5:15, 8:30] = 3
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    add_point(widget, image, (10, 10))
    wait_for_preview(qtbot, widget)
    given = []
    original = widget.session._decoder.predict

    def spy(*args, **kwargs):
        given.append(kwargs.get("mask_input"))
        return original(*args, **kwargs)

    widget.session._decoder.predict = spy
    widget.refine_label.value = 3
    qtbot.waitUntil(lambda: bool(given) and widget.is_idle, timeout=WAIT_MS)
    expected = mask_to_mask_input(labels.data == 3, widget.session.low_res_mask_size)
    np.testing.assert_array_equal(given[-1], expected)
    assert (given[-1] > 0).sum() == (expected > 0).sum() > 0


def test_seggpt_job_stops_at_once_when_its_output_layer_is_deleted(
    make_napari_viewer, qtbot, tiny_seggpt_hf_folder, monkeypatch
):
    from napari_segany._napari._qt import seggpt_widget as widget_module
    from napari_segany._napari._qt.seggpt_widget import SegGptWidget
    from napari_segany._napari.sample_data import blobs_stack

    viewer = make_napari_viewer()
    stack, truth = blobs_stack((10, 32, 32))
    painted = np.zeros_like(truth)
    painted[0] = truth[0]
    image = viewer.add_image(stack)
    prompt = viewer.add_labels(painted)
    widget = SegGptWidget(viewer)
    widget.model_picker.set_custom_path(str(tiny_seggpt_hf_folder))
    widget.model_picker.device_box.value = "cpu"
    spies = []
    original = widget_module.seggpt_predictor
    monkeypatch.setattr(
        widget_module,
        "seggpt_predictor",
        lambda m: spies.append(SpyingSegGpt(original(m), delay=0.3)) or spies[-1],
    )
    widget.reset_choices()
    widget.target_box.value = image
    widget.prompt_labels_box.value = prompt
    widget.run()
    qtbot.waitUntil(lambda: widget._run is not None and widget._run.written >= 2, timeout=WAIT_MS)
    viewer.layers.remove(widget._run.output)
    calls_at_removal = spies[0].calls
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    assert spies[0].calls - calls_at_removal <= 1  # at most the slice in flight
    assert spies[0].calls < 9
    assert "was removed" in widget.status.value
