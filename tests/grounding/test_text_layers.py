"""Grounded SAM on napari layers, without a viewer: scripting function and rectangle glue."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany._napari.text_layers import (
    add_detections_to_shapes,
    box_to_rectangle,
    rectangle_to_box,
    segment_layer_with_text,
    text_boxes_on_slice,
)
from napari_segany.grounding import Detections, GroundingDinoDetector

napari = pytest.importorskip("napari")


def _stack():
    rng = np.random.default_rng(7)
    data = rng.normal(100, 20, size=(2, 64, 80)).astype(np.float32)
    data[:, 10:40, 20:50] += 120
    return data


def test_box_rectangle_round_trip():
    box = np.array([3.0, 5.0, 20.0, 11.0])  # x0, y0, x1, y1: columns 3..19, rows 5..10
    rectangle = box_to_rectangle(box)
    assert rectangle.min(0).tolist() == [4.5, 2.5]  # (row, col) pixel edges
    np.testing.assert_allclose(rectangle_to_box(rectangle), box)


def test_detections_become_editable_rectangles_with_text():
    from napari.layers import Image, Shapes

    image = Image(np.zeros((2, 40, 60)), scale=(1, 2, 2), translate=(0, 10, -4))
    shapes = Shapes(ndim=3, scale=(1, 2, 2), translate=(0, 10, -4))
    found = Detections(
        np.array([[2.0, 4.0, 30.0, 20.0], [10, 10, 12, 12]], np.float32),
        np.array([0.9, 0.5], np.float32),
        ["nucleus", "cell"],
        (40, 60),
    )
    assert add_detections_to_shapes(shapes, image, (1,), found) == 2
    assert list(shapes.features["phrase"]) == ["nucleus", "cell"]
    assert "phrase" in str(shapes.text.string)
    shapes.add_rectangles([np.array([[1, 0, 0], [1, 0, 3], [1, 3, 3], [1, 3, 0]], float)])
    boxes, phrases, scores = text_boxes_on_slice(shapes, image, (1,))
    np.testing.assert_allclose(boxes[:2], found.boxes, atol=1e-5)
    assert phrases[:2] == ["nucleus", "cell"] and phrases[2] == ""
    assert scores[0] == pytest.approx(0.9) and np.isnan(scores[2])
    assert len(text_boxes_on_slice(shapes, image, (0,))[0]) == 0


def test_segment_layer_with_text_writes_labels_and_features(tiny_loaded, tiny_sam_model):
    from napari.layers import Image

    image = Image(_stack(), name="cells")
    labels = segment_layer_with_text(
        image,
        "cell. nucleus.",
        detector=GroundingDinoDetector(tiny_loaded),
        sam=tiny_sam_model,
        box_threshold=0.0,
        text_threshold=0.0,
        max_objects=3,
    )
    assert labels.data.shape == image.data.shape
    present = sorted(int(v) for v in np.unique(labels.data) if v)
    assert present and len(present) <= 6
    assert sorted(labels.features["index"].tolist()) == present
    assert all(isinstance(p, str) and p for p in labels.features["phrase"])
    assert ((labels.features["score"] >= 0) & (labels.features["score"] <= 1)).all()
    assert labels.data[0].any() and labels.data[1].any()


def test_no_detection_warns_and_writes_nothing(tiny_loaded, tiny_sam_model):
    from napari.layers import Image

    image = Image(_stack()[0])
    with pytest.warns(UserWarning, match="nothing matched"):
        labels = segment_layer_with_text(
            image, "cell.", detector=tiny_loaded, sam=tiny_sam_model, box_threshold=1.0
        )
    assert not labels.data.any()


def test_bad_text_fails_before_loading_models():
    from napari.layers import Image

    with pytest.raises(ValueError, match="empty"):
        segment_layer_with_text(Image(np.zeros((8, 8))), " ", detector="no/such-model")


def test_every_slice_job_stops_when_asked(tiny_loaded, tiny_sam_model):
    from napari_segany._napari.text_layers import segment_slices_job

    stack = _stack()
    calls = []

    def should_stop():
        calls.append(1)
        # Once per slice and once per backbone block (6 in the tiny Swin): stop inside the
        # second slice's backbone.
        return len(calls) > 9

    done = []
    job = segment_slices_job(
        lambda key: stack[key], [(0,), (1,)], "cell.", detector=GroundingDinoDetector(tiny_loaded),
        sam=tiny_sam_model, box_threshold=0.0, text_threshold=0.0, max_objects=2,
        contrast_limits=None, layer_id="x", should_stop=should_stop,
    )  # fmt: skip
    with pytest.raises(InterruptedError):
        for value in job:
            done.append(value)
    assert [d[2].slice_index for d in done] == [(0,)]
    assert len(calls) == 10
