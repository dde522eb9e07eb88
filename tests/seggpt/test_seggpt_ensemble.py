"""Feature ensemble over several prompts: the ORIGINAL SegGPT rule, not transformers' variant.

``original_ensemble_reference`` re-states, independently of the package, what the original
inference (Painter, SegGPT_inference/models_seggpt.py + seggpt_engine.py) does with N prompts
for one target, using transformers' sub-modules for the layers themselves:

- the batch holds N stacked inputs (prompt n over the target), both streams, 2N entries;
- every block ``idx`` runs with ``merge = 1 if merge_idx >= idx else 2``: after the attention,
  the target half of the attention output is averaged over the prompts, per stream while the
  streams are separate (merge = 1), over the whole batch after the merge (merge = 2);
- after block ``merge_idx`` the streams are averaged, features are the layer-normed outputs of
  the feature blocks, the decoder paints all entries and the result is entry 0's target half.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segany.seggpt import SegGptPredictor, load_seggpt

HALF = 32


def _ensemble_attention(update: torch.Tensor, merge: int) -> torch.Tensor:
    prompt, inputs = update.split(update.shape[1] // 2, dim=1)
    if merge == 1:
        num_prompts = update.shape[0] // 2
        inputs = (
            inputs.reshape(2, num_prompts, -1).mean(dim=1, keepdim=True).expand(2, num_prompts, -1)
        )
        inputs = inputs.reshape(prompt.shape)
    else:
        inputs = inputs.mean(dim=0, keepdim=True).expand_as(inputs)
    return torch.cat([prompt, inputs], dim=1)


@torch.no_grad()
def original_ensemble_reference(
    reference, target, prompt_pixels, prompt_masks, embedding_type="instance"
):
    """Painted target half (3, h, w) by the original SegGPT rule; inputs are normalised tensors."""
    config = reference.config
    num_prompts = prompt_pixels.shape[0]
    images = torch.cat((prompt_pixels, target.expand(num_prompts, -1, -1, -1)), dim=2)
    masks = torch.cat((prompt_masks, prompt_masks), dim=2)
    num_patches = (images.shape[2] // config.patch_size) * (images.shape[3] // config.patch_size)
    masked = torch.zeros(1, num_patches, dtype=torch.bool)
    masked[:, num_patches // 2 :] = True
    hidden = reference.model.embeddings(
        images, masks, bool_masked_pos=masked, embedding_type=embedding_type
    )
    features = []
    for idx, layer in enumerate(reference.model.encoder.layers):
        merge = 1 if config.merge_index >= idx else 2
        update = layer.attention(layer.layernorm_before(hidden))[0]
        if num_prompts > 1:
            update = _ensemble_attention(update, merge)
        hidden = hidden + update
        hidden = hidden + layer.mlp(layer.layernorm_after(hidden))
        if idx == config.merge_index:
            hidden = (hidden[: hidden.shape[0] // 2] + hidden[hidden.shape[0] // 2 :]) * 0.5
        if idx in config.intermediate_hidden_state_indices:
            features.append(reference.model.encoder.layernorm(hidden))
    painted = reference.decoder(torch.cat(features, dim=-1))
    return painted[0, :, painted.shape[2] // 2 :]


def _normalised_inputs(processor, rng, num_prompts):
    images = [rng.integers(0, 256, (HALF, HALF, 3), dtype=np.uint8) for _ in range(num_prompts)]
    labels = [rng.integers(0, 6, (HALF, HALF)) for _ in range(num_prompts)]
    target = rng.integers(0, 256, (HALF, HALF, 3), dtype=np.uint8)
    inputs = processor(
        images=[target] * num_prompts,
        prompt_images=images,
        prompt_masks=labels,
        num_labels=5,
        return_tensors="pt",
    )
    return images, labels, target, inputs


@pytest.fixture(scope="module")
def tiny_model(tiny_seggpt_hf_folder):
    return load_seggpt(tiny_seggpt_hf_folder, precision="fp32")


@pytest.mark.parametrize("num_prompts", [2, 3])
@pytest.mark.parametrize("prompt_type", ["instance", "semantic"])
def test_ensemble_follows_the_original_rule(
    tiny_model, tiny_seggpt_reference, tiny_seggpt_processor, num_prompts, prompt_type
):
    rng = np.random.default_rng(num_prompts)
    _, _, _, inputs = _normalised_inputs(tiny_seggpt_processor, rng, num_prompts)
    prompt_pixels, prompt_masks = inputs["prompt_pixel_values"], inputs["prompt_masks"]
    target = inputs["pixel_values"][:1]
    expected = original_ensemble_reference(
        tiny_seggpt_reference, target, prompt_pixels, prompt_masks, prompt_type
    )
    state = tiny_model.encode_prompts(prompt_pixels, prompt_masks, embedding_type=prompt_type)
    painted = tiny_model(target, state)
    assert painted.shape == (1, 3, HALF, HALF)
    torch.testing.assert_close(painted[0], expected, atol=1e-4, rtol=1e-4)
    # Several prompts matter: dropping one changes the painting.
    fewer = tiny_model(target, tiny_model.encode_prompts(prompt_pixels[:-1], prompt_masks[:-1]))
    assert (fewer[0] - expected).abs().max() > 1e-2


def test_transformers_feature_ensemble_differs_from_the_original(
    tiny_seggpt_reference, tiny_seggpt_processor
):
    """transformers averages image and mask streams together in the merge block: not original."""
    rng = np.random.default_rng(21)
    _, _, _, inputs = _normalised_inputs(tiny_seggpt_processor, rng, 3)
    original = original_ensemble_reference(
        tiny_seggpt_reference,
        inputs["pixel_values"][:1],
        inputs["prompt_pixel_values"],
        inputs["prompt_masks"],
    )
    with torch.no_grad():
        ported = tiny_seggpt_reference(**inputs, feature_ensemble=True).pred_masks[0, :, HALF:]
    assert (ported - original).abs().max() > 1e-2


def test_without_ensemble_every_prompt_equals_transformers_per_prompt(
    tiny_model, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(4)
    _, _, _, inputs = _normalised_inputs(tiny_seggpt_processor, rng, 3)
    state = tiny_model.encode_prompts(
        inputs["prompt_pixel_values"], inputs["prompt_masks"], feature_ensemble=False
    )
    painted = tiny_model(inputs["pixel_values"][:1], state)
    with torch.no_grad():
        expected = tiny_seggpt_reference(**inputs).pred_masks[:, :, HALF:]
    assert painted.shape == (3, 3, HALF, HALF)
    torch.testing.assert_close(painted, expected, atol=1e-4, rtol=1e-4)


def test_batched_targets_equal_one_by_one_with_ensemble(tiny_model, tiny_seggpt_processor):
    rng = np.random.default_rng(8)
    _, _, _, inputs = _normalised_inputs(tiny_seggpt_processor, rng, 2)
    state = tiny_model.encode_prompts(inputs["prompt_pixel_values"], inputs["prompt_masks"])
    targets = torch.randn(3, 3, HALF, HALF, generator=torch.Generator().manual_seed(0))
    batched = tiny_model(targets, state)
    single = torch.cat([tiny_model(targets[i : i + 1], state) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-2


def test_predictor_ensembles_several_prompts(
    tiny_seggpt_hf_folder, tiny_seggpt_reference, tiny_seggpt_processor
):
    rng = np.random.default_rng(17)
    images, labels, target, inputs = _normalised_inputs(tiny_seggpt_processor, rng, 3)
    expected = original_ensemble_reference(
        tiny_seggpt_reference,
        inputs["pixel_values"][:1],
        inputs["prompt_pixel_values"],
        inputs["prompt_masks"],
    )
    expected_rgb = torch.clip(
        (
            expected.permute(1, 2, 0) * torch.tensor([0.229, 0.224, 0.225])
            + torch.tensor([0.485, 0.456, 0.406])
        )
        * 255,
        0,
        255,
    ).numpy()
    from napari_segany.seggpt import build_palette, rgb_to_labels

    expected_labels, _ = rgb_to_labels(expected_rgb, build_palette(5))
    predictor = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, precision="fp32"))
    predictor.set_prompts(images, labels, num_labels=5)
    np.testing.assert_array_equal(predictor.predict(target), expected_labels)


def test_model_rejects_wrong_shapes_and_types(tiny_model):
    good = torch.zeros(1, 3, HALF, HALF)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        tiny_model.encode_prompts(torch.zeros(1, 3, HALF, HALF + 1), good)
    with pytest.raises(ValueError, match="as many prompt masks"):
        tiny_model.encode_prompts(good, torch.zeros(2, 3, HALF, HALF))
    with pytest.raises(ValueError, match="embedding_type"):
        tiny_model.encode_prompts(good, good, embedding_type="panoptic")
    state = tiny_model.encode_prompts(good, good)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        tiny_model(torch.zeros(1, 1, HALF, HALF), state)


def test_ensemble_computes_the_shared_target_half_once_per_target(tiny_model):
    """With N prompts the MLP sees N prompt halves but only one target half per target."""
    prompts = torch.randn(3, 3, HALF, HALF, generator=torch.Generator().manual_seed(1))
    state = tiny_model.encode_prompts(prompts, prompts)
    batches: list[int] = []
    hook = tiny_model.encoder.layers[-2].mlp.register_forward_hook(
        lambda module, args, out: batches.append(args[0].shape[0])
    )
    try:
        tiny_model(torch.randn(2, 3, HALF, HALF), state)
    finally:
        hook.remove()
    assert sorted(batches) == [2, 6]  # 2 targets x 3 prompts, and the 2 shared target halves
