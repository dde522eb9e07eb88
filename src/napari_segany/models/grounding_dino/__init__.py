"""Grounding DINO in plain PyTorch (torch only: no napari, no transformers)."""

from .config import (
    BertConfig,
    GroundingDinoConfig,
    SwinConfig,
    grounding_dino_base_config,
    grounding_dino_tiny_config,
)
from .grounding_dino import (
    DEFAULT_DELIMITER_TOKEN_IDS,
    GroundingDino,
    GroundingDinoOutput,
)
from .text_masks import phrase_attention_masks

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
