"""Named SegGPT checkpoints: sources, typed architecture, preprocessing, license, size.

Importing it does not import torch (the architecture is a plain dataclass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from napari_segany.models.seggpt.config import SegGptArchitecture  # a plain dataclass, no torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegGptModelInfo:
    """A released SegGPT checkpoint.

    Attributes
    ----------
    name
        Registry name, e.g. ``"seggpt-vit-l"``.
    hub_repo
        Hugging Face repo in transformers' layout (``config.json`` + ``model.safetensors``).
    original_repo, original_filename
        Hugging Face repo and file of the original Painter checkpoint (state dict under
        ``"model"``, original key names).
    architecture
        Every hyperparameter the model is built from (as :class:`SamArchitecture` for SAM).
    input_size
        (height, width) of the stacked input; each prompt and target is resized to half of it.
    mean, std
        ImageNet normalisation of the RGB inputs and colour masks, in [0, 1] units.
    license
        License of the weights.
    size_mb
        Approximate download size of the float32 weights.
    """

    name: str
    hub_repo: str
    original_repo: str
    original_filename: str
    architecture: SegGptArchitecture = field(default_factory=SegGptArchitecture)
    input_size: tuple[int, int] = (896, 448)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""
    size_mb: int = 0
    description: str = ""

    @property
    def prompt_size(self) -> tuple[int, int]:
        """(height, width) every prompt and target image is resized to."""
        return (self.input_size[0] // 2, self.input_size[1])


SEGGPT_MODELS: Mapping[str, SegGptModelInfo] = MappingProxyType(
    {
        "seggpt-vit-l": SegGptModelInfo(
            name="seggpt-vit-l",
            hub_repo="BAAI/seggpt-vit-large",
            original_repo="BAAI/SegGPT",
            original_filename="seggpt_vit_large.pth",
            architecture=SegGptArchitecture(
                image_size=(896, 448),
                patch_size=16,
                hidden_size=1024,
                num_layers=24,
                num_heads=16,
                mlp_dim=4096,
                pretrain_image_size=224,
                merge_index=2,
                feature_indices=(5, 11, 17, 23),
                decoder_hidden_size=64,
                layer_norm_eps=1e-6,
                qkv_bias=True,
                use_relative_position=True,
            ),
            input_size=(896, 448),
            license="MIT",
            size_mb=1480,
            description="SegGPT ViT-L/16, 896x448 stacked input (Wang et al. 2023, BAAI Painter)",
        ),
    }
)

DEFAULT_SEGGPT_MODEL = "seggpt-vit-l"


def get_model_info(name: str) -> SegGptModelInfo:
    """Look up a registry entry; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return SEGGPT_MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown SegGPT model {name!r}; known: {', '.join(SEGGPT_MODELS)}"
        ) from None
