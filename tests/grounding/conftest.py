"""Session fixtures: one tiny random Grounding DINO, saved once in the transformers layout."""

from __future__ import annotations

import pytest

from tests.grounding.tiny_grounding_dino import build_tiny_reference, write_tiny_folder


@pytest.fixture(scope="session")
def tiny_reference():
    """transformers' GroundingDinoForObjectDetection with random weights (float32, eval)."""
    return build_tiny_reference(seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_reference):
    """Transformers-layout folder: config.json, model.safetensors, tokenizer, processor config."""
    return write_tiny_folder(tmp_path_factory.mktemp("tiny_gdino"), tiny_reference)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_folder):
    """This package's model loaded from the folder, float32 on the CPU."""
    from napari_segany.grounding import load_grounding_dino

    return load_grounding_dino(tiny_folder, device="cpu", precision="fp32")
