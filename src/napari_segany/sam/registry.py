"""Named Segment Anything models: architecture numbers, checkpoint sources, preprocessing, license.

Importing this module is cheap: it imports neither torch nor numpy. Every number needed to build a
variant lives in its :class:`SamArchitecture`; the loader (``napari_segany.sam.loader``) builds the
torch model from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SAM_MODELS",
    "SamArchitecture",
    "SamPreprocessing",
    "SamVariant",
    "get_sam_variant",
    "ORIGINAL_SAM_URL",
]

ORIGINAL_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

# ImageNet statistics on the 0-255 scale, as in the original release.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


_POSITIVE_FIELDS = (
    "image_size",
    "patch_size",
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "encoder_mlp_dim",
    "encoder_window_size",
    "prompt_embed_dim",
    "mask_in_chans",
    "decoder_depth",
    "decoder_num_heads",
    "decoder_mlp_dim",
    "decoder_attention_downsample_rate",
    "num_multimask_outputs",
    "iou_head_depth",
    "iou_head_hidden_dim",
)


@dataclass(frozen=True)
class SamArchitecture:
    """Every hyperparameter of a SAM model (image encoder, prompt encoder, mask decoder).

    Defaults are SAM ViT-B at 1024 x 1024 input. The image embedding is
    ``(prompt_embed_dim, image_size // patch_size, image_size // patch_size)`` and the low-resolution
    masks are ``4 * image_size // patch_size`` pixels square, so small test models work end to end.
    """

    # Image encoder (ViT with windowed and global attention).
    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_mlp_dim: int = 3072
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_qkv_bias: bool = True
    encoder_use_abs_pos: bool = True
    encoder_use_rel_pos: bool = True
    encoder_layer_norm_eps: float = 1e-6
    # Prompt encoder; prompt_embed_dim is also the image embedding's channel count.
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    # Mask decoder (two-way transformer + hypernetwork heads).
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample_rate: int = 2
    decoder_layer_norm_eps: float = 1e-5
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def image_embedding_size(self) -> int:
        """Side of the square image embedding grid (64 for the released models)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the low-resolution mask logits and of ``mask_input`` (256 for released models)."""
        return 4 * self.image_embedding_size

    def __post_init__(self) -> None:
        for name in _POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_num_heads {self.encoder_num_heads}"
            )
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ValueError(
                f"global attention indexes {self.encoder_global_attn_indexes} outside 0..{self.encoder_depth - 1}"
            )
        if self.prompt_embed_dim % 2:
            raise ValueError("prompt_embed_dim must be even (sine and cosine positional features)")


@dataclass(frozen=True)
class SamPreprocessing:
    """How an 8-bit RGB image becomes the model input, and prompts follow it.

    Attributes
    ----------
    resize
        ``"longest_side"``: the longest side is resized to ``image_size`` keeping the aspect ratio
        (PIL bilinear, as the original ``ResizeLongestSide``) and the image is zero-padded at the
        bottom and right. ``"square"``: stretched to ``image_size x image_size`` without keeping the
        aspect ratio (MedSAM; bicubic with anti-aliasing as ``skimage.transform.resize(order=3)``).
    normalization
        ``"mean_std"``: ``(pixel - pixel_mean) / pixel_std`` on the 0-255 scale. ``"min_max"``: the
        resized image is scaled to [0, 1] by its own minimum and maximum (MedSAM).
    pixel_mean, pixel_std
        Per-channel (R, G, B) statistics on the 0-255 scale, used with ``"mean_std"``.
    """

    resize: str = "longest_side"
    normalization: str = "mean_std"
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        if self.resize not in ("longest_side", "square"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.normalization not in ("mean_std", "min_max"):
            raise ValueError(f"unknown normalization {self.normalization!r}")


@dataclass(frozen=True)
class SamVariant:
    """A released SAM checkpoint: what it is, where to get it, how to feed it.

    Attributes
    ----------
    name
        Registry name, e.g. ``"sam-vit-b"``.
    architecture
        The numbers the model is built from.
    hub_repo
        Hugging Face Hub repository in the transformers layout.
    original_filename, original_url
        The original release checkpoint (segment_anything key layout), if any.
    preprocessing
        Image and prompt preprocessing the model was trained with.
    license
        SPDX identifier of the weights' license.
    parameters_millions, download_megabytes
        Size (parameters; approximate float32 download), for users choosing a model.
    description
        One line for menus and docs.
    """

    name: str
    architecture: SamArchitecture
    hub_repo: str
    original_filename: str | None = None
    original_url: str | None = None
    preprocessing: SamPreprocessing = field(default_factory=SamPreprocessing)
    license: str = "Apache-2.0"
    parameters_millions: float = 0.0
    download_megabytes: float = 0.0
    description: str = ""


VIT_B = SamArchitecture()
VIT_L = SamArchitecture(
    encoder_embed_dim=1024,
    encoder_depth=24,
    encoder_num_heads=16,
    encoder_mlp_dim=4096,
    encoder_global_attn_indexes=(5, 11, 17, 23),
)
VIT_H = SamArchitecture(
    encoder_embed_dim=1280,
    encoder_depth=32,
    encoder_num_heads=16,
    encoder_mlp_dim=5120,
    encoder_global_attn_indexes=(7, 15, 23, 31),
)
# SlimSAM (Chen et al. 2023): ViT-B with uniformly pruned embedding and MLP widths; 12 heads kept.
SLIMSAM_50 = SamArchitecture(encoder_embed_dim=384, encoder_mlp_dim=1536)
SLIMSAM_77 = SamArchitecture(encoder_embed_dim=168, encoder_mlp_dim=696)

# MedSAM (Ma et al. 2024, bowang-lab/MedSAM): min-max normalised, stretched to 1024 x 1024.
MEDSAM_PREPROCESSING = SamPreprocessing(resize="square", normalization="min_max")


def _original(filename: str) -> dict[str, str]:
    return {"original_filename": filename, "original_url": ORIGINAL_SAM_URL + filename}


SAM_MODELS: dict[str, SamVariant] = {
    variant.name: variant
    for variant in (
        SamVariant(
            name="sam-vit-b",
            architecture=VIT_B,
            hub_repo="facebook/sam-vit-base",
            **_original("sam_vit_b_01ec64.pth"),
            parameters_millions=93.7,
            download_megabytes=375,
            description="Segment Anything ViT-B: fastest original SAM",
        ),
        SamVariant(
            name="sam-vit-l",
            architecture=VIT_L,
            hub_repo="facebook/sam-vit-large",
            **_original("sam_vit_l_0b3195.pth"),
            parameters_millions=312.3,
            download_megabytes=1250,
            description="Segment Anything ViT-L",
        ),
        SamVariant(
            name="sam-vit-h",
            architecture=VIT_H,
            hub_repo="facebook/sam-vit-huge",
            **_original("sam_vit_h_4b8939.pth"),
            parameters_millions=641.1,
            download_megabytes=2560,
            description="Segment Anything ViT-H: most accurate original SAM",
        ),
        SamVariant(
            name="slimsam-50",
            architecture=SLIMSAM_50,
            hub_repo="nielsr/slimsam-50-uniform",
            parameters_millions=28.0,
            download_megabytes=112,
            description="SlimSAM, 50% pruned ViT-B: light, for CPUs",
        ),
        SamVariant(
            name="slimsam-77",
            architecture=SLIMSAM_77,
            hub_repo="nielsr/slimsam-77-uniform",
            parameters_millions=9.7,
            download_megabytes=39,
            description="SlimSAM, 77% pruned ViT-B: lightest",
        ),
        SamVariant(
            name="medsam-vit-b",
            architecture=VIT_B,
            hub_repo="wanglab/medsam-vit-base",
            preprocessing=MEDSAM_PREPROCESSING,
            parameters_millions=93.7,
            download_megabytes=375,
            description="MedSAM: SAM ViT-B fine-tuned on medical images (use box prompts)",
        ),
    )
}


def get_sam_variant(name: str) -> SamVariant:
    """The registry entry called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return SAM_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown SAM model {name!r}; known: {', '.join(SAM_MODELS)}") from None
