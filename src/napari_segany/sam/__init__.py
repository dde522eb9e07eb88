"""Segment Anything (SAM): load any released checkpoint and predict masks from points and boxes.

>>> from napari_segany.sam import SamPredictor, load_sam
>>> predictor = SamPredictor(load_sam("sam-vit-b"))            # doctest: +SKIP
>>> predictor.set_image(image)                                 # doctest: +SKIP
>>> masks, scores, low_res = predictor.predict(point_coords=[[120, 80]], point_labels=[1])  # doctest: +SKIP

Importing this package is cheap: torch is imported on first use of ``load_sam`` or
``SamPredictor`` (the registry imports no torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from napari_segany.sam.registry import (
    SAM_MODELS,
    SamArchitecture,
    SamPreprocessing,
    SamVariant,
    get_sam_variant,
)

if TYPE_CHECKING:
    from napari_segany.sam.automatic import SamAutomaticMaskGenerator
    from napari_segany.sam.loader import build_sam, load_sam
    from napari_segany.sam.predictor import SamEmbedding, SamPredictor

__all__ = [
    "SAM_MODELS",
    "SamArchitecture",
    "SamAutomaticMaskGenerator",
    "SamEmbedding",
    "SamPredictor",
    "SamPreprocessing",
    "SamVariant",
    "build_sam",
    "get_sam_variant",
    "load_sam",
]

_LAZY = {
    "load_sam": "napari_segany.sam.loader",
    "build_sam": "napari_segany.sam.loader",
    "SamPredictor": "napari_segany.sam.predictor",
    "SamEmbedding": "napari_segany.sam.predictor",
    "SamAutomaticMaskGenerator": "napari_segany.sam.automatic",
    "SegmentEverythingResult": "napari_segany.sam.automatic",
    "segment_everything": "napari_segany.sam.automatic",
    "records_to_label_image": "napari_segany.sam.automatic",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
