"""Parity with transformers' Grounding DINO on identical random weights (tiny config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segany.grounding import GroundingDinoDetector, load_grounding_dino
from tests.grounding.tiny_grounding_dino import reference_processor

PROMPTS = (
    "cat.",
    "red cell. nucleus. mitochondria.",
    "cell. cell. small cell.",
)
IMAGE_SHAPES = {"square": (80, 80), "wide": (60, 150), "tall": (120, 50), "exact": (64, 64)}


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    image[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = (250, 20, 20)
    return image


@pytest.mark.parametrize("text", PROMPTS + ("a big, round cell? the nuclei.",))
def test_tokenization_and_phrase_masks_match_transformers(tiny_folder, tiny_loaded, text):
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        SPECIAL_TOKENS,
        generate_masks_with_special_tokens_and_transfer_map,
    )

    from napari_segany.models.grounding_dino import phrase_attention_masks

    processor = reference_processor(tiny_folder)
    expected = processor.tokenizer(text).input_ids
    ours = tiny_loaded.tokenizer.encode(text)
    assert ours == expected
    assert 100 not in ours, "a test word is missing from the tiny vocabulary"
    ids = torch.tensor([ours])
    ref_mask, ref_pos = generate_masks_with_special_tokens_and_transfer_map(
        ids, torch.tensor(SPECIAL_TOKENS)
    )
    mask, pos = phrase_attention_masks(ids, torch.tensor(tiny_loaded.tokenizer.delimiter_token_ids))
    assert torch.equal(mask, ref_mask)
    assert torch.equal(pos, ref_pos)
    if text.count(".") > 1:  # several phrases: positions restart
        assert (pos[0, 2:] == 0).any()


@pytest.mark.parametrize("shape", [(64, 64), (48, 100), (100, 52)])
def test_logits_and_boxes_match_transformers(tiny_reference, tiny_loaded, tiny_folder, shape):
    processor = reference_processor(tiny_folder)
    ids = torch.tensor([tiny_loaded.tokenizer.encode("red cell. nucleus. cell.")])
    pixels = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny_reference(pixel_values=pixels, input_ids=ids)
        ours = tiny_loaded.model(pixels, ids)
    finite = torch.isfinite(ref.logits)
    assert torch.equal(finite, torch.isfinite(ours.logits))
    assert finite.sum() == ours.logits.shape[1] * ids.shape[1]
    torch.testing.assert_close(ours.logits[finite], ref.logits[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.boxes, ref.pred_boxes, atol=1e-5, rtol=1e-4)
    assert ours.boxes.std() > 0.05  # boxes are not the untrained proposals
    del processor


def _separated_threshold(values: np.ndarray, low: float, high: float) -> float:
    """A threshold in [low, high] as far as possible from every value."""
    candidates = np.linspace(low, high, 81)
    distance = np.abs(candidates[:, None] - np.asarray(values).ravel()[None, :]).min(1)
    return float(candidates[int(np.argmax(distance))])


@pytest.mark.parametrize("shape_name", list(IMAGE_SHAPES))
@pytest.mark.parametrize("text", PROMPTS)
def test_detections_match_transformers_post_processing(
    tiny_reference, tiny_loaded, tiny_folder, shape_name, text
):
    image = _image(IMAGE_SHAPES[shape_name])
    processor = reference_processor(tiny_folder)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        outputs = tiny_reference(**inputs)
    probs = outputs.logits.sigmoid()[0]
    scores = np.sort(probs.max(-1)[0].numpy())[::-1]
    box_threshold = _separated_threshold(scores[:12], scores[11], scores[2])
    kept = probs[probs.max(-1)[0] > box_threshold]
    text_threshold = _separated_threshold(kept[torch.isfinite(kept)].numpy(), 0.3, 0.7)
    ref = processor.post_process_grounded_object_detection(
        outputs,
        inputs.input_ids,
        threshold=box_threshold,
        text_threshold=text_threshold,
        target_sizes=[image.shape[:2]],
    )[0]
    found = GroundingDinoDetector(tiny_loaded).detect(image, text, box_threshold, text_threshold)

    order = torch.argsort(ref["scores"], descending=True)
    assert 3 <= len(found) <= 12
    assert len(found) == len(order)
    height, width = image.shape[:2]
    ref_boxes = ref["boxes"][order].clone()
    ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clamp(0, width)
    ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clamp(0, height)
    np.testing.assert_allclose(found.scores, ref["scores"][order].numpy(), atol=2e-3)
    np.testing.assert_allclose(found.boxes, ref_boxes.numpy(), atol=0.05 * max(image.shape))
    assert found.phrases == [ref["text_labels"][i] for i in order.tolist()]
    assert (found.boxes[:, 2] <= width).all() and (found.boxes[:, 3] <= height).all()
    assert (found.boxes >= 0).all()


def test_default_precision_stays_close_to_fp32(tiny_folder, tiny_loaded):
    default = load_grounding_dino(tiny_folder)  # "auto": bfloat16 on this CPU when supported
    ids = torch.tensor([tiny_loaded.tokenizer.encode("red cell. nucleus.")])
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = tiny_loaded.model(pixels, ids)
        fast = default.model(pixels, ids)
    assert fast.logits.dtype == torch.float32 and fast.boxes.dtype == torch.float32
    finite = torch.isfinite(exact.logits)
    assert torch.equal(finite, torch.isfinite(fast.logits))
    # Random weights amplify rounding (real checkpoints are better conditioned); near-tied
    # queries may swap in the top-k selection, so boxes are matched to their nearest.
    logits = torch.stack([exact.logits[finite], fast.logits[finite]])
    assert torch.corrcoef(logits)[0, 1] > 0.85
    top = exact.logits[0].max(-1)[0].topk(5).indices
    nearest = (fast.boxes[0][:, None] - exact.boxes[0, top][None]).abs().sum(-1).min(0)[0]
    assert (nearest < 0.04).sum() >= 3


def test_fp16_and_bf16_run(tiny_folder, tiny_loaded):
    ids = torch.tensor([tiny_loaded.tokenizer.encode("cat.")])
    pixels = torch.randn(1, 3, 64, 64)
    for precision in ("bf16", "fp16"):
        loaded = load_grounding_dino(tiny_folder, precision=precision)
        assert loaded.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
        with torch.no_grad():
            out = loaded.model(pixels, ids)
        assert torch.isfinite(out.boxes).all()
        assert torch.isfinite(out.logits[..., : ids.shape[1]]).all()


def test_cpu_embedding_bag_sampling_equals_grid_sample():
    from napari_segany.models.grounding_dino.deformable_attention import (
        deformable_attention_embedding_bag,
        deformable_attention_grid_sample,
    )

    shapes = [(9, 13), (5, 7), (3, 4), (2, 2)]
    total = sum(h * w for h, w in shapes)
    generator = torch.Generator().manual_seed(4)
    value = torch.randn(2, total, 4, 8, generator=generator)
    # Locations also outside [0, 1] and exactly on pixel edges and centres.
    locations = torch.rand(2, 11, 4, 4, 3, 2, generator=generator) * 1.4 - 0.2
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 0.5 / 9])
    weights = torch.rand(2, 11, 4, 4, 3, generator=generator)
    expected = deformable_attention_grid_sample(value, shapes, locations, weights)
    ours = deformable_attention_embedding_bag(value, shapes, locations, weights)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
