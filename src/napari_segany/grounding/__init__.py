"""Grounded SAM: find objects by text with Grounding DINO, segment them with SAM.

>>> from napari_segany.grounding import GroundingDinoDetector, load_grounding_dino, segment_with_text
>>> detector = GroundingDinoDetector(load_grounding_dino("grounding-dino-tiny"))  # doctest: +SKIP
>>> found = detector.detect(image, "nucleus. mitochondrion.")                     # doctest: +SKIP
>>> result = segment_with_text(image, "nucleus.", detector=detector, sam=load_sam("sam-vit-b"))  # doctest: +SKIP

Importing this package is cheap: torch is imported on first use of the loader, detector or
pipeline (the registry imports no torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from napari_segany.grounding.registry import (
    GROUNDING_DINO_MODELS,
    GroundingDinoPreprocessing,
    GroundingDinoVariant,
    get_grounding_dino_variant,
)

if TYPE_CHECKING:
    from napari_segany.grounding.detector import Detections, GroundingDinoDetector
    from napari_segany.grounding.loader import LoadedGroundingDino, load_grounding_dino
    from napari_segany.grounding.segment import TextObject, TextSegmentation, segment_with_text

__all__ = [
    "GROUNDING_DINO_MODELS",
    "Detections",
    "GroundingDinoDetector",
    "GroundingDinoPreprocessing",
    "GroundingDinoVariant",
    "LoadedGroundingDino",
    "TextObject",
    "TextSegmentation",
    "get_grounding_dino_variant",
    "load_grounding_dino",
    "segment_with_text",
]

_LAZY = {
    "load_grounding_dino": "napari_segany.grounding.loader",
    "LoadedGroundingDino": "napari_segany.grounding.loader",
    "GroundingDinoDetector": "napari_segany.grounding.detector",
    "Detections": "napari_segany.grounding.detector",
    "segment_with_text": "napari_segany.grounding.segment",
    "TextSegmentation": "napari_segany.grounding.segment",
    "TextObject": "napari_segany.grounding.segment",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
