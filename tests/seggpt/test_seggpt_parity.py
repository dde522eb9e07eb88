"""Parity with transformers' SegGptForImageSegmentation + SegGptImageProcessor on identical weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.seggpt import SegGptPredictor, load_seggpt


def reference_labels(
    reference, processor, image, prompt_image, prompt_labels, num_labels, **kwargs
):
    """transformers' full pipeline: preprocess, forward, post-process to a label map."""
    inputs = processor(
        images=[image],
        prompt_images=[prompt_image],
        prompt_masks=[prompt_labels],
        num_labels=num_labels,
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = reference(**inputs, **kwargs)
    result = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[image.shape[:2]], num_labels=num_labels
    )[0]
    return result.numpy(), inputs, outputs


@pytest.fixture(scope="module")
def predictors(tiny_seggpt_hf_folder, tiny_seggpt_pth, tiny_seggpt_architecture):
    from_folder = load_seggpt(tiny_seggpt_hf_folder, precision="fp32")
    from_pth = load_seggpt(tiny_seggpt_pth, precision="fp32", architecture=tiny_seggpt_architecture)
    return {"folder": SegGptPredictor(from_folder), "pth": SegGptPredictor(from_pth)}


@pytest.mark.parametrize("layout", ["folder", "pth"])
@pytest.mark.parametrize("num_labels", [1, 5, 26])
def test_single_prompt_labels_equal_transformers(
    predictors, layout, num_labels, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(num_labels)
    prompt_image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, num_labels + 1, (40, 52))
    image = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)  # non-square, other size
    expected, _, _ = reference_labels(
        tiny_seggpt_reference, tiny_seggpt_processor, image, prompt_image, prompt_labels, num_labels
    )
    predictor = predictors[layout]
    predictor.set_prompts([prompt_image], [prompt_labels], num_labels=num_labels)
    labels = predictor.predict(image)
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32
    # The comparison means something only if the painting spreads over the palette.
    assert len(np.unique(expected)) >= min(num_labels + 1, 10)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("prompt_type", ["instance", "semantic"])
def test_painted_mask_close_to_transformers_logits(
    predictors, prompt_type, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(7)
    prompt_image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, 4, (32, 32))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _, inputs, outputs = reference_labels(
        tiny_seggpt_reference,
        tiny_seggpt_processor,
        image,
        prompt_image,
        prompt_labels,
        3,
        embedding_type=prompt_type,
    )
    model = predictors["folder"].model
    state = model.encode_prompts(
        inputs["prompt_pixel_values"], inputs["prompt_masks"], embedding_type=prompt_type
    )
    painted = model(inputs["pixel_values"], state)
    expected = outputs.pred_masks[:, :, 32:]
    assert painted.shape == expected.shape == (1, 3, 32, 32)
    torch.testing.assert_close(painted, expected, atol=1e-4, rtol=1e-4)


def test_prompt_type_changes_the_result(predictors):
    rng = np.random.default_rng(3)
    prompt_image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, 8, (32, 32))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    predictor = predictors["folder"]
    results = {}
    for prompt_type in ("instance", "semantic"):
        predictor.set_prompts([prompt_image], [prompt_labels], prompt_type=prompt_type)
        results[prompt_type] = predictor.predict(image)
    assert (results["instance"] != results["semantic"]).mean() > 0.05


def test_grayscale_uint16_inputs_match_transformers_on_converted_rgb(
    predictors, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(11)
    prompt_image = rng.integers(100, 4000, (50, 30), dtype=np.uint16)
    prompt_labels = rng.integers(0, 4, (50, 30)).astype(np.uint16)
    image = rng.integers(100, 4000, (20, 70), dtype=np.uint16)
    limits = (100.0, 4000.0)
    expected, _, _ = reference_labels(
        tiny_seggpt_reference,
        tiny_seggpt_processor,
        to_uint8_rgb(image, limits),
        to_uint8_rgb(prompt_image, limits),
        prompt_labels.astype(np.int64),
        3,
    )
    predictor = predictors["pth"]
    predictor.set_prompts([prompt_image], [prompt_labels], contrast_limits=limits)
    labels = predictor.predict(image, contrast_limits=limits)
    assert labels.shape == (20, 70)
    np.testing.assert_array_equal(labels, expected)


def test_colour_mask_prompts_match_transformers_without_rgb_conversion(
    predictors, tiny_seggpt_reference, tiny_seggpt_processor
):
    from napari_segany.seggpt import build_palette, labels_to_rgb

    rng = np.random.default_rng(5)
    prompt_image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    colour_mask = labels_to_rgb(rng.integers(0, 8, (32, 40)), build_palette(7))
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    inputs = tiny_seggpt_processor(
        images=[image],
        prompt_images=[prompt_image],
        prompt_masks=[colour_mask],
        do_convert_rgb=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = tiny_seggpt_reference(**inputs)
    expected = tiny_seggpt_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(30, 30)], num_labels=7
    )[0].numpy()
    predictor = predictors["folder"]
    predictor.set_prompts([prompt_image], [colour_mask], num_labels=7)
    np.testing.assert_array_equal(predictor.predict(image), expected)


def test_distance_is_distance_to_the_chosen_palette_colour(
    predictors, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(9)
    prompt_image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, 6, (32, 32))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    inputs = tiny_seggpt_processor(
        images=[image],
        prompt_images=[prompt_image],
        prompt_masks=[prompt_labels],
        num_labels=5,
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = tiny_seggpt_reference(**inputs)
    scored = tiny_seggpt_processor.post_process_semantic_segmentation(
        outputs, num_labels=5, return_segmentation_scores=True
    )[0]
    best_squared = -scored.segmentation_scores.max(dim=0).values.numpy()
    predictor = predictors["folder"]
    predictor.set_prompts([prompt_image], [prompt_labels], num_labels=5)
    labels, distance = predictor.predict(image, return_confidence=True)
    np.testing.assert_array_equal(labels, scored.segmentation.numpy())
    assert distance.dtype == np.float32 and distance.shape == (32, 32)
    np.testing.assert_allclose(distance, np.sqrt(best_squared), atol=2e-2)
    assert distance.max() > 1.0  # not trivially zero


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_half_precision_mostly_agrees_with_fp32(
    tiny_seggpt_hf_folder, predictors, precision, dtype
):
    rng = np.random.default_rng(13)
    prompt_image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, 4, (32, 32))
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    half = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, precision=precision))
    assert half.model.dtype == dtype
    results = []
    for predictor in (half, predictors["folder"]):
        predictor.set_prompts([prompt_image], [prompt_labels])
        results.append(predictor.predict(image))
    assert (results[0] == results[1]).mean() > 0.8


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_agrees_with_cpu(tiny_seggpt_hf_folder, predictors, precision):
    rng = np.random.default_rng(19)
    prompt_image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    prompt_labels = rng.integers(0, 6, (40, 40))
    stack = rng.integers(0, 256, (3, 36, 44, 3), dtype=np.uint8)
    cuda = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, device="cuda", precision=precision))
    results = []
    for predictor in (cuda, predictors["folder"]):
        predictor.set_prompts([prompt_image], [prompt_labels])
        results.append(predictor.predict_batch(stack))
    agreement = np.mean([(a == b).mean() for a, b in zip(*results, strict=True)])
    assert agreement > (0.999 if precision == "fp32" else 0.8)
