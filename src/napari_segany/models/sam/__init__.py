"""Segment Anything (SAM) in plain PyTorch: one module per concept.

Parameter names follow the original segment_anything release, so its checkpoints load as they
are; :mod:`napari_segany.sam.checkpoint_layouts` renames the transformers layout.
"""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .two_way_transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer"]
