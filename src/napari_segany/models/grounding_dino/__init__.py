"""Grounding DINO in plain PyTorch (torch only: no napari, no transformers)."""

from napari_segany.models.grounding_dino.config import (
    BertConfig,
    GroundingDinoConfig,
    SwinConfig,
    grounding_dino_base_config,
    grounding_dino_tiny_config,
)
from napari_segany.models.grounding_dino.grounding_dino import (
    DEFAULT_DELIMITER_TOKEN_IDS,
    GroundingDino,
    GroundingDinoOutput,
)
from napari_segany.models.grounding_dino.text_masks import phrase_attention_masks

__all__ = [
    "DEFAULT_DELIMITER_TOKEN_IDS",
    "BertConfig",
    "GroundingDino",
    "GroundingDinoConfig",
    "GroundingDinoOutput",
    "SwinConfig",
    "grounding_dino_base_config",
    "grounding_dino_tiny_config",
    "phrase_attention_masks",
]
