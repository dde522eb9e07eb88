"""Named Grounding DINO models: hub ids, original checkpoints, preprocessing, license and size.

Importing this module is cheap: it imports neither torch nor numpy. The architecture of each
variant comes from ``napari_segany.models.grounding_dino.config`` (``grounding_dino_tiny_config``,
``grounding_dino_base_config``) by the ``architecture`` name recorded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "GROUNDING_DINO_MODELS",
    "GroundingDinoPreprocessing",
    "GroundingDinoVariant",
    "ORIGINAL_GROUNDING_DINO_REPO",
    "get_grounding_dino_variant",
]

# The hub repo holding the original IDEA-Research release files (.pth, original key names).
ORIGINAL_GROUNDING_DINO_REPO = "ShilongLiu/GroundingDINO"


@dataclass(frozen=True)
class GroundingDinoPreprocessing:
    """How an image becomes the model input.

    The image is resized (bilinear, antialiased) so that its shorter side is
    ``shortest_edge`` unless that makes the longer side exceed ``longest_edge``, in which case the
    longer side becomes ``longest_edge``; then scaled to [0, 1] and normalized with ``mean``/``std``.
    """

    shortest_edge: int = 800
    longest_edge: int = 1333
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GroundingDinoVariant:
    """One released Grounding DINO model."""

    name: str
    hub_repo: str
    architecture: str  # "tiny" or "base"
    original_checkpoint: str
    license: str = "Apache-2.0"
    num_parameters_millions: float = 0.0
    download_size_mb: int = 0
    preprocessing: GroundingDinoPreprocessing = field(default_factory=GroundingDinoPreprocessing)
    description: str = ""


GROUNDING_DINO_MODELS: dict[str, GroundingDinoVariant] = {
    v.name: v
    for v in (
        GroundingDinoVariant(
            name="grounding-dino-tiny",
            hub_repo="IDEA-Research/grounding-dino-tiny",
            architecture="tiny",
            original_checkpoint="groundingdino_swint_ogc.pth",
            num_parameters_millions=172,
            download_size_mb=689,
            description="Swin-T backbone + BERT-base; O365, GoldG, Cap4M",
        ),
        GroundingDinoVariant(
            name="grounding-dino-base",
            hub_repo="IDEA-Research/grounding-dino-base",
            architecture="base",
            original_checkpoint="groundingdino_swinb_cogcoor.pth",
            num_parameters_millions=233,
            download_size_mb=933,
            description="Swin-B backbone + BERT-base; COCO, O365, GoldG, Cap4M, OpenImage, ODinW-35, RefCOCO",
        ),
    )
}


def get_grounding_dino_variant(name: str) -> GroundingDinoVariant:
    """Look up a registry entry; ``KeyError`` lists the known names."""
    try:
        return GROUNDING_DINO_MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown Grounding DINO model {name!r}; known: {', '.join(GROUNDING_DINO_MODELS)}"
        ) from None
