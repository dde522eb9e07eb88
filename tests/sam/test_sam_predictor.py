"""SamPredictor: parity with the official segment_anything predictor, and its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam import SamEmbedding, SamPredictor, load_sam
from tests.fixtures_sam import TINY_IMAGE_SIZE, TINY_LOW_RES, import_segment_anything


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.random((height // 4 + 2, width // 4 + 2, 3))
    image = np.kron(smooth, np.ones((4, 4, 1)))[:height, :width]
    return (image * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def official_predictor(official_tiny_sam):
    segment_anything = import_segment_anything()
    return segment_anything.SamPredictor(official_tiny_sam)


@pytest.fixture
def predictor(tiny_sam_model):
    return SamPredictor(tiny_sam_model)


PROMPTS = {
    "point": {"point_coords": np.array([[40.0, 30.0]]), "point_labels": np.array([1])},
    "points": {
        "point_coords": np.array([[40.0, 30.0], [100.0, 70.0], [5.0, 80.0]]),
        "point_labels": np.array([1, 0, 1]),
    },
    "box": {"box": np.array([20.0, 10.0, 120.0, 80.0])},
    "points+box": {
        "point_coords": np.array([[60.0, 40.0], [10.0, 10.0]]),
        "point_labels": np.array([1, 0]),
        "box": np.array([20.0, 10.0, 120.0, 80.0]),
    },
}


@pytest.mark.parametrize("shape", [(90, 150), (150, 90), (128, 128), (300, 200)])
@pytest.mark.parametrize("kind", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches_official_predictor(predictor, official_predictor, shape, kind, multimask):
    image = _image(*shape)
    predictor.set_image(image)
    official_predictor.set_image(image)
    torch.testing.assert_close(
        predictor.get_image_embedding(),
        official_predictor.get_image_embedding(),
        atol=1e-4,
        rtol=1e-4,
    )
    assert predictor.input_size == tuple(official_predictor.input_size)
    prompts = PROMPTS[kind]
    logits, scores, low_res = predictor.predict(
        **prompts, multimask_output=multimask, return_logits=True
    )
    ref_logits, ref_scores, ref_low_res = official_predictor.predict(
        **prompts, multimask_output=multimask, return_logits=True
    )
    channels = 3 if multimask else 1
    assert logits.shape == (channels, *shape) and logits.dtype == np.float32
    assert scores.shape == (channels,) and scores.dtype == np.float32
    assert low_res.shape == (channels, TINY_LOW_RES, TINY_LOW_RES)
    np.testing.assert_allclose(low_res, ref_low_res, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, atol=2e-4, rtol=1e-4)
    masks, _, _ = predictor.predict(**prompts, multimask_output=multimask)
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks, logits > 0)


def test_mask_input_round_trip_matches_official(predictor, official_predictor):
    image = _image(100, 140, seed=3)
    predictor.set_image(image)
    official_predictor.set_image(image)
    _, _, low_res = predictor.predict(**PROMPTS["point"])
    mask_input = low_res[:1]
    ours = predictor.predict(
        **PROMPTS["points"], mask_input=mask_input, multimask_output=False, return_logits=True
    )
    theirs = official_predictor.predict(
        **PROMPTS["points"], mask_input=mask_input, multimask_output=False, return_logits=True
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


def test_pth_and_folder_give_the_same_predictions(tiny_sam_pth, tiny_sam_model):
    from_pth = SamPredictor(load_sam(tiny_sam_pth, precision="fp32"))
    from_folder = SamPredictor(tiny_sam_model)
    image = _image(70, 110)
    from_pth.set_image(image)
    from_folder.set_image(image)
    a = from_pth.predict(**PROMPTS["points+box"], return_logits=True)
    b = from_folder.predict(**PROMPTS["points+box"], return_logits=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=2e-4, rtol=1e-4)


def test_out_of_order_calls_raise_runtime_error(predictor):
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(**PROMPTS["point"])
    with pytest.raises(RuntimeError):
        predictor.get_image_embedding()
    with pytest.raises(RuntimeError):
        predictor.get_embedding_state()
    with pytest.raises(RuntimeError):
        predictor.predict_torch(torch.zeros(1, 1, 2), torch.ones(1, 1))
    predictor.set_image(_image(50, 50))
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError):
        predictor.predict(**PROMPTS["point"])


@pytest.mark.parametrize(
    "image",
    [
        np.linspace(0, 4000, 60 * 80, dtype=np.float64).reshape(60, 80).astype(np.uint16),
        np.random.default_rng(1).normal(size=(60, 80)).astype(np.float32),
        np.random.default_rng(2).random((60, 80)),
        np.random.default_rng(3).integers(0, 255, (60, 80, 4)).astype(np.uint8),
        np.random.default_rng(4).integers(0, 255, (60, 80, 1)).astype(np.uint8),
        np.random.default_rng(5).integers(-500, 500, (60, 80, 3)).astype(np.int16),
    ],
    ids=["uint16", "float32-normal", "float64-unit", "rgba", "gray-1-channel", "int16-rgb"],
)
def test_any_dtype_is_embedded_as_its_uint8_rgb_conversion(predictor, image):
    predictor.set_image(image)
    converted = predictor.get_image_embedding().clone()
    predictor.set_image(to_uint8_rgb(image))
    torch.testing.assert_close(converted, predictor.get_image_embedding())
    assert predictor.original_size == (60, 80)


def test_contrast_limits_are_used(predictor):
    image = np.random.default_rng(0).integers(0, 4096, (40, 40)).astype(np.uint16)
    predictor.set_image(image, contrast_limits=(100, 1000))
    windowed = predictor.get_image_embedding().clone()
    predictor.set_image(to_uint8_rgb(image, (100, 1000)))
    torch.testing.assert_close(windowed, predictor.get_image_embedding())
    predictor.set_image(image)
    assert not torch.allclose(windowed, predictor.get_image_embedding())


def test_wrong_channel_count_is_a_clear_error(predictor):
    with pytest.raises(ValueError, match="channel"):
        predictor.set_image(np.zeros((20, 20, 5), dtype=np.uint8))


def test_embedding_state_round_trip(tiny_sam_model, predictor):
    predictor.set_image(_image(80, 120, seed=5))
    expected = predictor.predict(**PROMPTS["points+box"], return_logits=True)
    state = predictor.get_embedding_state()
    assert isinstance(state, SamEmbedding)
    assert state.original_size == (80, 120) and state.input_size == (85, 128)
    other = SamPredictor(tiny_sam_model)
    other.set_embedding_state(state)
    assert other.is_image_set
    assert other.get_image_embedding() is not None
    for a, b in zip(
        other.predict(**PROMPTS["points+box"], return_logits=True), expected, strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AttributeError):
        state.original_size = (1, 1)  # frozen


def test_embedding_state_from_another_model_is_rejected(tiny_sam_hf_folder, predictor):
    other_model = load_sam(tiny_sam_hf_folder, precision="bf16")
    other = SamPredictor(other_model)
    other.set_image(_image(40, 40))
    with pytest.raises(ValueError, match="another model"):
        predictor.set_embedding_state(other.get_embedding_state())


def test_many_boxes_in_one_call_equal_one_by_one(predictor):
    predictor.set_image(_image(90, 150, seed=2))
    boxes = np.array(
        [[10, 10, 60, 50], [140, 80, 70, 20], [0, 0, 149, 89], [30, 40, 31, 41]], dtype=float
    )
    masks, scores, low_res = predictor.predict(box=boxes, return_logits=True)
    assert masks.shape == (4, 3, 90, 150)
    assert scores.shape == (4, 3)
    assert low_res.shape == (4, 3, TINY_LOW_RES, TINY_LOW_RES)
    for i, box in enumerate(boxes):
        single = predictor.predict(box=box, return_logits=True)
        np.testing.assert_allclose(masks[i], single[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(scores[i], single[1], atol=1e-5, rtol=1e-4)
    shared_points = predictor.predict(point_coords=[[20, 20]], point_labels=[1], box=boxes[:2])
    assert shared_points[0].shape == (2, 3, 90, 150)


def test_box_corners_in_any_order(predictor):
    predictor.set_image(_image(90, 150, seed=4))
    a = predictor.predict(box=np.array([20, 10, 120, 80]), return_logits=True)
    b = predictor.predict(box=np.array([120, 80, 20, 10]), return_logits=True)
    c = predictor.predict(box=np.array([20, 80, 120, 10]), return_logits=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"point_coords": np.zeros((2, 2)), "point_labels": np.ones(3)}, "one label per point"),
        ({"point_coords": np.zeros((2, 2))}, "point_labels"),
        ({"point_coords": np.zeros((2, 3)), "point_labels": np.ones(2)}, r"\(N, 2\)"),
        ({"point_labels": np.ones(2)}, "without point_coords"),
        ({"point_coords": np.zeros((1, 2)), "point_labels": np.array([2])}, "labels"),
        ({"box": np.zeros(3)}, "box"),
        ({"box": np.array([0, 0, np.nan, 4])}, "finite"),
        ({"mask_input": np.zeros((1, 16, 16))}, "mask_input"),
        (
            {"box": np.zeros((2, 4)), "mask_input": np.zeros((3, 1, TINY_LOW_RES, TINY_LOW_RES))},
            "mask inputs",
        ),
    ],
)
def test_invalid_prompts_are_clear_value_errors(predictor, kwargs, message):
    predictor.set_image(_image(40, 60))
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_predict_torch_batches_point_prompts(predictor):
    predictor.set_image(_image(100, 60, seed=6))
    coords = np.array([[[10.0, 20.0]], [[50.0, 90.0]], [[30.0, 30.0]]])
    coords_t = predictor.apply_coords_torch(torch.as_tensor(coords), predictor.original_size)
    masks, iou, low_res = predictor.predict_torch(coords_t, torch.ones(3, 1, dtype=torch.int64))
    assert masks.shape == (3, 3, 100, 60) and masks.dtype == torch.bool
    assert iou.shape == (3, 3) and low_res.shape == (3, 3, TINY_LOW_RES, TINY_LOW_RES)
    for i in range(3):
        single = predictor.predict(point_coords=coords[i], point_labels=[1])
        np.testing.assert_array_equal(masks[i].numpy(), single[0])


def test_apply_coords_and_boxes_match_official_transform(predictor):
    segment_anything = import_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(TINY_IMAGE_SIZE)
    coords = np.array([[0.0, 0.0], [149.0, 89.0], [33.3, 12.7]])
    boxes = np.array([[1.0, 2.0, 30.0, 40.0], [100.0, 50.0, 149.0, 89.0]])
    for size in [(90, 150), (150, 90), (1000, 1000)]:
        np.testing.assert_allclose(
            predictor.apply_coords(coords, size), transform.apply_coords(coords, size)
        )
        np.testing.assert_allclose(
            predictor.apply_boxes(boxes, size), transform.apply_boxes(boxes, size)
        )
        np.testing.assert_allclose(
            predictor.apply_boxes_torch(torch.as_tensor(boxes), size).numpy(),
            transform.apply_boxes(boxes, size),
            rtol=1e-6,
        )
    assert segment_anything.SamPredictor is not None


def test_medsam_preprocessing_stretches_and_min_max_normalises(tiny_sam_hf_folder):
    from skimage.transform import resize

    model = load_sam(tiny_sam_hf_folder, precision="fp32", preprocessing="medsam")
    predictor = SamPredictor(model)
    image = _image(60, 100, seed=8)
    predictor.set_image(image)
    assert predictor.input_size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    # MedSAM's own inference code: bicubic stretch, uint8, min-max to [0, 1], no mean/std.
    resized = resize(image, (128, 128, 3), order=3, preserve_range=True, anti_aliasing=True).astype(
        np.uint8
    )
    normalised = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    pixels = torch.as_tensor(normalised, dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = model.embed_image(pixels)
    torch.testing.assert_close(predictor.get_image_embedding(), expected, atol=1e-5, rtol=1e-5)
    # Boxes are scaled to the square frame (x by 128/100, y by 128/60).
    box = np.array([10.0, 6.0, 50.0, 30.0])
    np.testing.assert_allclose(predictor.apply_boxes(box, (60, 100)), [12.8, 12.8, 64.0, 64.0])
    logits, _, low_res = predictor.predict(box=box, multimask_output=False, return_logits=True)
    direct = torch.nn.functional.interpolate(
        torch.as_tensor(low_res)[None], (60, 100), mode="bilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(logits, direct.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "size"), [((3, 32, 32), (128, 128)), ((2, 7, 5), (21, 10)), ((1, 8, 8), (5, 13))]
)
def test_resize_bilinear_equals_interpolate(shape, size):
    from napari_segany.sam.transforms import resize_bilinear

    maps = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        maps[:, None], size, mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(resize_bilinear(maps, size), expected, atol=1e-5, rtol=1e-5)


def test_pth_checkpoint_matches_official_predictor(tiny_sam_pth, official_predictor):
    """The original-layout file, loaded here, against the official predictor on a non-square image."""
    predictor = SamPredictor(load_sam(tiny_sam_pth, precision="fp32"))
    image = _image(75, 128, seed=9)
    predictor.set_image(image)
    official_predictor.set_image(image)
    for kind in ("points", "points+box"):
        ours = predictor.predict(**PROMPTS[kind], return_logits=True)
        theirs = official_predictor.predict(**PROMPTS[kind], return_logits=True)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
