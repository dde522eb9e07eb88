"""SegGPT: segment images "like these examples" (in-context segmentation).

>>> from napari_segany.seggpt import load_seggpt, SegGptPredictor
>>> predictor = SegGptPredictor(load_seggpt("seggpt-vit-l"))         # doctest: +SKIP
>>> predictor.set_prompts([image], [labels])                          # doctest: +SKIP
>>> predicted = predictor.predict(other_image)                        # doctest: +SKIP

Importing this package (and its registry and palette) does not import torch; ``load_seggpt``,
``SegGptPredictor`` and ``convert_state_dict`` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .palette import MAX_LABELS, build_palette, labels_to_rgb, palette_step, rgb_to_labels
from .registry import DEFAULT_SEGGPT_MODEL, SEGGPT_MODELS, SegGptModelInfo, get_model_info

if TYPE_CHECKING:
    from .loader import convert_state_dict, load_seggpt
    from .predictor import SegGptPredictor

_LAZY = {
    "load_seggpt": "loader",
    "convert_state_dict": "loader",
    "SegGptPredictor": "predictor",
}

__all__ = [
    "DEFAULT_SEGGPT_MODEL",
    "MAX_LABELS",
    "SEGGPT_MODELS",
    "SegGptModelInfo",
    "SegGptPredictor",
    "build_palette",
    "convert_state_dict",
    "get_model_info",
    "labels_to_rgb",
    "load_seggpt",
    "palette_step",
    "rgb_to_labels",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
