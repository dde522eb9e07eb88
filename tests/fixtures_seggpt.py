"""Fixtures for SegGPT tests: tiny random-weight models written in every checkpoint layout.

The reference is transformers' ``SegGptForImageSegmentation`` on a tiny config. Its own
initialisation is nearly zero for tokens, position tables and relative positions, which would
let a wrong wiring of those pass unnoticed, so every parameter is redrawn with a magnitude that
matters, and the decoder head is scaled so that painted colours spread over many palette
entries. The same weights are written

- as a transformers folder (``config.json`` + ``model.safetensors``, ``save_pretrained``) and
- as an original Painter checkpoint (``{"model": state_dict}`` with the original key names,
  renamed here with an independent table taken from transformers' conversion script, not with
  the package's loader).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

TINY_SEGGPT_HF_CONFIG = {
    "image_size": [64, 32],
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "mlp_dim": 64,
    "pretrain_image_size": 16,
    "decoder_hidden_size": 16,
    "merge_index": 1,
    "intermediate_hidden_state_indices": [1, 2, 3],
    "drop_path_rate": 0.0,
}
"""Stacked input 64 x 32 (two 32 x 32 halves), 8 x 4 patch grid, 2 x 2 pretraining positions
(so the position embedding is interpolated), merge after block 1, decoder features of blocks
1 (the merge block itself), 2 and 3."""

TINY_SEGGPT_SEED = 1234


def hf_to_original_key(key: str) -> str:
    """transformers SegGPT key -> original Painter key (table of transformers' converter)."""
    fixed = {
        "model.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "model.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "model.embeddings.mask_token": "mask_token",
        "model.embeddings.segment_token_input": "segment_token_x",
        "model.embeddings.segment_token_prompt": "segment_token_y",
        "model.embeddings.type_token_semantic": "type_token_cls",
        "model.embeddings.type_token_instance": "type_token_ins",
        "model.embeddings.position_embeddings": "pos_embed",
        "model.encoder.layernorm.weight": "norm.weight",
        "model.encoder.layernorm.bias": "norm.bias",
        "decoder.decoder_embed.weight": "decoder_embed.weight",
        "decoder.decoder_embed.bias": "decoder_embed.bias",
        "decoder.decoder_pred.conv.weight": "decoder_pred.0.weight",
        "decoder.decoder_pred.conv.bias": "decoder_pred.0.bias",
        "decoder.decoder_pred.layernorm.weight": "decoder_pred.1.weight",
        "decoder.decoder_pred.layernorm.bias": "decoder_pred.1.bias",
        "decoder.decoder_pred.head.weight": "decoder_pred.3.weight",
        "decoder.decoder_pred.head.bias": "decoder_pred.3.bias",
    }
    if key in fixed:
        return fixed[key]
    prefix = "model.encoder.layers."
    assert key.startswith(prefix), key
    index, rest = key[len(prefix) :].split(".", 1)
    for new, old in (
        ("layernorm_before.", "norm1."),
        ("layernorm_after.", "norm2."),
        ("attention.", "attn."),
        ("mlp.lin1.", "mlp.fc1."),
        ("mlp.lin2.", "mlp.fc2."),
    ):
        if rest.startswith(new):
            return f"blocks.{index}.{old}{rest[len(new) :]}"
    raise AssertionError(f"no original name for {key}")


def randomise_seggpt_(model, seed: int = TINY_SEGGPT_SEED) -> None:
    """Redraw every parameter of a transformers SegGPT so that each one visibly matters."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layernorm" in name and name.endswith("weight"):
                value = 1.0 + 0.3 * noise
            elif name.endswith("bias"):
                value = 0.2 * noise
            elif (
                param.ndim >= 2
                and "token" not in name
                and "position" not in name
                and "rel_pos" not in name
            ):
                fan_in = math.prod(param.shape[1:])
                value = noise / math.sqrt(fan_in)
            else:  # tokens, absolute and relative position tables
                value = 0.7 * noise
            if name.endswith("decoder_pred.head.weight"):
                value = value * 3.0
            if name.endswith("decoder_pred.head.bias"):
                value = 0.8 + 0.3 * noise
            param.copy_(value)


def make_tiny_seggpt_reference(seed: int = TINY_SEGGPT_SEED):
    """The transformers reference model (eval, fp32) with the tiny config and random weights."""
    from transformers import SegGptConfig, SegGptForImageSegmentation

    model = SegGptForImageSegmentation(SegGptConfig(**TINY_SEGGPT_HF_CONFIG)).eval()
    randomise_seggpt_(model, seed)
    return model


def make_tiny_seggpt_processor():
    """transformers' SegGPT image processor at the tiny model's 32 x 32 halves."""
    try:
        from transformers import SegGptImageProcessorPil as processor_class
    except ImportError:  # older transformers
        from transformers import SegGptImageProcessor as processor_class
    half = TINY_SEGGPT_HF_CONFIG["image_size"][1]
    return processor_class(size={"height": half, "width": half})


@pytest.fixture(scope="session")
def tiny_seggpt_reference():
    """transformers ``SegGptForImageSegmentation`` holding the tiny random weights (fp32, eval)."""
    return make_tiny_seggpt_reference()


@pytest.fixture(scope="session")
def tiny_seggpt_processor():
    """transformers SegGPT image processor sized for the tiny model."""
    return make_tiny_seggpt_processor()


@pytest.fixture(scope="session")
def tiny_seggpt_hf_folder(tmp_path_factory, tiny_seggpt_reference) -> Path:
    """Folder in transformers' layout (``config.json`` + ``model.safetensors``) of the tiny model."""
    folder = tmp_path_factory.mktemp("tiny_seggpt_hf")
    tiny_seggpt_reference.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_seggpt_pth(tmp_path_factory, tiny_seggpt_reference) -> Path:
    """The same weights as an original Painter checkpoint: ``{"model": state_dict}``, original names."""
    import torch

    state = {
        hf_to_original_key(k): v.clone() for k, v in tiny_seggpt_reference.state_dict().items()
    }
    path = tmp_path_factory.mktemp("tiny_seggpt_pth") / "seggpt_tiny.pth"
    torch.save({"model": state, "epoch": 0}, path)
    return path


@pytest.fixture(scope="session")
def tiny_seggpt_architecture():
    """The :class:`SegGptArchitecture` of the tiny model (needed to load the ``.pth``)."""
    from napari_segany.models.seggpt import SegGptArchitecture

    return SegGptArchitecture.from_hf_config(TINY_SEGGPT_HF_CONFIG)


@pytest.fixture()
def tiny_seggpt_predictor(tiny_seggpt_hf_folder):
    """A fresh :class:`SegGptPredictor` on the tiny model (fp32, CPU), without prompts."""
    from napari_segany.seggpt import SegGptPredictor, load_seggpt

    return SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, device="cpu", precision="fp32"))
