"""segment_with_text end to end with tiny random Grounding DINO and SAM models."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from napari_segany.grounding import GroundingDinoDetector, segment_with_text
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam import SamPredictor
from napari_segany.sam.box_nms import pairwise_box_iou
from napari_segany.sam.interactive_session import InteractiveSamSession


@pytest.fixture(scope="module")
def detector(tiny_loaded):
    return GroundingDinoDetector(tiny_loaded)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    image = rng.normal(100, 20, size=(72, 96)).astype(np.float32)
    image[10:40, 20:60] += 120
    image[50:65, 60:90] -= 60
    return image


def test_boxes_become_labelled_objects(detector, tiny_sam_model, image):
    result = segment_with_text(
        image,
        "cell. nucleus.",
        detector=detector,
        sam=tiny_sam_model,
        box_threshold=0.0,
        text_threshold=0.0,
        max_objects=6,
    )
    assert result.labels.shape == image.shape and result.labels.dtype == np.int32
    assert 1 <= len(result.objects) <= 6
    assert len(result.detections) <= 6
    ids = sorted(int(v) for v in np.unique(result.labels) if v)
    assert ids == [obj.label for obj in result.objects] == list(range(1, len(result.objects) + 1))
    boxes = torch.from_numpy(result.detections.boxes)
    iou = pairwise_box_iou(boxes, boxes).fill_diagonal_(0)
    assert (iou <= 0.8).all(), "duplicates survived NMS"
    for obj in result.objects:
        assert obj.phrase and set(re.findall(r"[\w\[\]]+", obj.phrase)) <= {"cell", "nucleus"}
        assert not obj.phrase.endswith(".")
        assert 0.0 <= obj.score <= 1.0
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 <= x1 <= image.shape[1] and 0 <= y0 <= y1 <= image.shape[0]
    assert "object" in result.message

    # Same as decoding the kept boxes with SAM directly and painting smallest first.
    predictor = SamPredictor(tiny_sam_model)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=result.detections.boxes, multimask_output=False)
    masks = masks[:, 0]
    areas = masks.reshape(len(masks), -1).sum(1)
    expected = np.zeros(image.shape, np.int32)
    label = 0
    for index in sorted(
        range(len(masks)), key=lambda i: (areas[i], -result.detections.scores[i], i)
    ):
        free = masks[index] & (expected == 0)
        if free.any():
            label += 1
            expected[free] = label
    np.testing.assert_array_equal(result.labels, expected)


def test_predictor_and_session_give_the_same_labels(detector, tiny_sam_model, image):
    kwargs = dict(detector=detector, box_threshold=0.0, text_threshold=0.0, max_objects=4)
    direct = segment_with_text(image, "cell.", sam=tiny_sam_model, **kwargs)
    via_predictor = segment_with_text(image, "cell.", sam=SamPredictor(tiny_sam_model), **kwargs)
    session = InteractiveSamSession()
    session.set_model(tiny_sam_model, "tiny", "fp32")
    key = session.embedding_key("layer", (0,))
    via_session = segment_with_text(image, "cell.", sam=session, embedding_key=key, **kwargs)
    assert session.has_embedding(key)
    again = segment_with_text(image, "cell.", sam=session, embedding_key=key, **kwargs)
    for other in (via_predictor, via_session, again):
        np.testing.assert_array_equal(other.labels, direct.labels)
        assert [o.phrase for o in other.objects] == [o.phrase for o in direct.objects]


def test_cap_on_objects(detector, tiny_sam_model, image):
    result = segment_with_text(
        image,
        "cell.",
        detector=detector,
        sam=tiny_sam_model,
        box_threshold=0.0,
        text_threshold=0.0,
        max_objects=1,
    )
    assert len(result.detections) == 1 and len(result.objects) <= 1
    with pytest.raises(ValueError, match="max_objects"):
        segment_with_text(image, "cell.", detector=detector, sam=tiny_sam_model, max_objects=0)


def test_no_detection_gives_an_empty_result_and_a_message(detector, tiny_sam_model, image):
    result = segment_with_text(
        image, "cell.", detector=detector, sam=tiny_sam_model, box_threshold=1.0
    )
    assert result.is_empty and not result.labels.any()
    assert "nothing matched" in result.message


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("   ", "empty"), (" . , ?", "no words"), ("cell " * 300, "tokens")],
)
def test_bad_text_is_a_clear_error(detector, tiny_sam_model, image, text, match):
    with pytest.raises(ValueError, match=match):
        segment_with_text(image, text, detector=detector, sam=tiny_sam_model)


def test_image_smaller_than_a_patch(detector, tiny_sam_model):
    with pytest.raises(ValueError, match="patch"):
        segment_with_text(np.ones((3, 40)), "cell.", detector=detector, sam=tiny_sam_model)


def test_detect_accepts_gray_rgb_and_contrast_limits(detector, image):
    gray8 = to_uint8_rgb(image)[..., 0]
    gray = detector.detect(gray8, "cell", box_threshold=0.0)
    rgb = detector.detect(np.repeat(gray8[..., None], 3, -1), "CELL.", box_threshold=0.0)
    np.testing.assert_allclose(gray.boxes, rgb.boxes)
    assert gray.phrases == rgb.phrases
    limited = detector.detect(image, "cell.", box_threshold=0.0, contrast_limits=(0, 400))
    assert limited.boxes.shape == gray.boxes.shape
    assert np.all(np.diff(gray.scores) <= 0)


def test_very_elongated_image_with_fewer_tokens_than_queries(detector):
    strip = np.random.default_rng(1).integers(0, 255, (8, 400), dtype=np.uint8)
    found = detector.detect(strip, "cell.", box_threshold=0.0)
    assert 0 < len(found) < detector.model.model.config.num_queries
    assert (found.boxes[:, 3] <= 8).all() and (found.boxes[:, 2] <= 400).all()
