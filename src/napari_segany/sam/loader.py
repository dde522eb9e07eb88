"""``load_sam``: any released SAM checkpoint -> a ready :class:`napari_segany.models.sam.Sam`.

Sources: a registry name, a Hugging Face Hub repo id (transformers layout), a local folder in
that layout, or a local weights file in the original layout (``sam_vit_b_01ec64.pth``, MedSAM's
``medsam_vit_b.pth``, SlimSAM's uniform ``.pth``) or the transformers layout. Reading is safe
(safetensors or ``weights_only``), strict (missing and unexpected keys are named) and holds one
copy of the weights (:func:`napari_segany.checkpoints.build_with_weights`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from napari_segany import checkpoints
from napari_segany.models.precision import resolve_device, resolve_dtype
from napari_segany.models.sam import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from napari_segany.sam import checkpoint_layouts as layouts
from napari_segany.sam.registry import (
    MEDSAM_PREPROCESSING,
    SAM_MODELS,
    SamArchitecture,
    SamPreprocessing,
    SamVariant,
)

logger = logging.getLogger(__name__)

__all__ = ["build_sam", "load_sam"]

PREPROCESSING_NAMES = {"sam": SamPreprocessing(), "medsam": MEDSAM_PREPROCESSING}


def build_sam(
    architecture: SamArchitecture,
    *,
    name: str = "sam",
    preprocessing: SamPreprocessing | None = None,
) -> Sam:
    """Construct an (uninitialised) SAM model with the given architecture.

    Call under ``torch.device("meta")`` to build without memory, as the loader does. The model
    keeps ``architecture``, ``name`` and ``preprocessing`` as attributes.
    """
    a = architecture
    grid = a.image_embedding_size
    image_encoder = ImageEncoderViT(
        image_size=a.image_size,
        patch_size=a.patch_size,
        embed_dim=a.encoder_embed_dim,
        depth=a.encoder_depth,
        num_heads=a.encoder_num_heads,
        mlp_dim=a.encoder_mlp_dim,
        out_channels=a.prompt_embed_dim,
        qkv_bias=a.encoder_qkv_bias,
        use_abs_pos=a.encoder_use_abs_pos,
        use_rel_pos=a.encoder_use_rel_pos,
        window_size=a.encoder_window_size,
        global_attn_indexes=a.encoder_global_attn_indexes,
        layer_norm_eps=a.encoder_layer_norm_eps,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=a.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(a.image_size, a.image_size),
        mask_in_chans=a.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=a.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=a.decoder_depth,
            embed_dim=a.prompt_embed_dim,
            num_heads=a.decoder_num_heads,
            mlp_dim=a.decoder_mlp_dim,
            attention_downsample_rate=a.decoder_attention_downsample_rate,
            layer_norm_eps=a.decoder_layer_norm_eps,
        ),
        num_multimask_outputs=a.num_multimask_outputs,
        iou_head_depth=a.iou_head_depth,
        iou_head_hidden_dim=a.iou_head_hidden_dim,
    )
    model = Sam(
        image_encoder,
        prompt_encoder,
        mask_decoder,
        name=name,
        preprocessing=preprocessing or SamPreprocessing(),
    )
    model.architecture = architecture
    return model


def load_sam(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype = "auto",
    *,
    preprocessing: SamPreprocessing | str | None = None,
) -> Sam:
    """Load a SAM model, ready for :class:`napari_segany.sam.SamPredictor`.

    Parameters
    ----------
    source
        One of: a registry name (``"sam-vit-b"``, ``"sam-vit-l"``, ``"sam-vit-h"``,
        ``"slimsam-50"``, ``"slimsam-77"``, ``"medsam-vit-b"``; downloaded once into the Hugging
        Face cache); a local folder with ``config.json`` and ``model.safetensors`` or
        ``pytorch_model.bin`` (transformers layout); a local weights file (``.pth``, ``.pt``,
        ``.bin``, ``.safetensors``) in the original or transformers layout, the architecture
        recognised from tensor shapes; or a Hub repo id in the transformers layout
        (``"facebook/sam-vit-base"``).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``.
    precision
        ``"auto"`` (bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere),
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    preprocessing
        Override the image preprocessing: ``"sam"``, ``"medsam"`` or a
        :class:`~napari_segany.sam.registry.SamPreprocessing`. By default it comes from the
        registry entry; for files it is MedSAM's when the file name contains "medsam".

    Returns
    -------
    Sam
        In eval mode, without gradients, with ``.name`` and ``.preprocessing`` set.

    Raises
    ------
    ValueError
        ``source`` is ``None`` or empty.
    FileNotFoundError
        A path-like source that does not exist (it starts with ``.``, ``/`` or ``~``, has a
        weights-file suffix or several ``/``): raised at once, without a hub look-up.
    napari_segany.checkpoints.CheckpointError
        Unreadable or truncated file, unknown layout, missing / unexpected / mis-shaped keys,
        a registry model whose downloaded config disagrees with its registry entry.
    napari_segany.checkpoints.WeightsUnavailableError
        Weights neither cached nor downloadable; the message says how to get them.
    """
    text = checkpoints.check_model_source(source, SAM_MODELS)
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    override = _resolve_preprocessing(preprocessing)
    path = Path(text).expanduser()

    if text in SAM_MODELS:
        variant = SAM_MODELS[text]
        folder = checkpoints.download_from_hub(variant.hub_repo, display_name=variant.name)
        return _load_registry_folder(folder, variant, dev, dtype, override or variant.preprocessing)
    # A fine-tuned model folder (napari_segany.training): base model + saved changes.
    if path.is_dir() and (path / "napari_segany_finetune.json").is_file():
        from napari_segany.training.saved_model import load_finetuned_sam

        return load_finetuned_sam(path, dev, dtype)
    if path.is_dir():
        return _load_folder(
            path, dev, dtype, name=str(path), preprocessing=override or _guess_preprocessing(path)
        )
    if path.is_file():
        return _load_file(path, dev, dtype, preprocessing=override or _guess_preprocessing(path))
    if _looks_like_repo_id(text) and not checkpoints.looks_like_path(text):
        folder = checkpoints.download_from_hub(
            text, display_name=f"no such file or folder {text!r}; as a hub repo, {text!r}"
        )
        variant = _variant_of_repo(text)
        if variant is not None:
            return _load_registry_folder(
                folder, variant, dev, dtype, override or variant.preprocessing, name=text
            )
        guessed = _guess_preprocessing(Path(text))
        return _load_folder(folder, dev, dtype, name=text, preprocessing=override or guessed)
    raise FileNotFoundError(
        f"no such file or folder: {text!r} (and it is not a registry name: "
        f"{', '.join(SAM_MODELS)}, nor a Hugging Face Hub repo id owner/name)"
    )


def _load_registry_folder(
    folder: Path,
    variant: SamVariant,
    device: torch.device,
    dtype: torch.dtype,
    preprocessing: SamPreprocessing,
    *,
    name: str | None = None,
) -> Sam:
    """Build a registry model from its entry's architecture; the folder's config must agree."""
    config = checkpoints.read_config(folder)
    described = layouts.architecture_from_transformers_config(config)
    differences = layouts.architecture_differences(variant.architecture, described)
    if differences:
        raise checkpoints.CheckpointError(
            f"the config.json of {variant.name} ({variant.hub_repo}, in {folder}) disagrees with "
            f"the registry entry: {'; '.join(differences)}. The download may be of another "
            f"model; load the folder by its path to use its own config"
        )
    architecture = replace(
        variant.architecture,
        encoder_layer_norm_eps=described.encoder_layer_norm_eps,
        decoder_layer_norm_eps=described.decoder_layer_norm_eps,
    )
    state = checkpoints.read_folder_state_dict(folder)
    layout = layouts.detect_layout(state, str(folder))
    state = layouts.rename_to_original(state, layout)
    return _build(
        architecture,
        state,
        device,
        dtype,
        name=name or variant.name,
        preprocessing=preprocessing,
        source=str(folder),
    )


def _load_folder(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    name: str,
    preprocessing: SamPreprocessing,
) -> Sam:
    config = checkpoints.read_config(folder)
    architecture = layouts.architecture_from_transformers_config(config)
    state = checkpoints.read_folder_state_dict(folder)
    layout = layouts.detect_layout(state, str(folder))
    state = layouts.rename_to_original(state, layout)
    if layout == layouts.ORIGINAL:  # an original-layout file with a config: trust the shapes
        architecture = layouts.architecture_from_state_dict(state, str(folder))
    return _build(
        architecture,
        state,
        device,
        dtype,
        name=name,
        preprocessing=preprocessing,
        source=str(folder),
    )


def _load_file(
    path: Path, device: torch.device, dtype: torch.dtype, *, preprocessing: SamPreprocessing
) -> Sam:
    state = checkpoints.read_state_dict(path)
    layout = layouts.detect_layout(state, str(path))
    state = layouts.rename_to_original(state, layout)
    eps = 1e-6 if layout == layouts.TRANSFORMERS else 1e-5
    architecture = layouts.architecture_from_state_dict(state, str(path), layer_norm_eps=eps)
    matches = layouts.matching_variant_names(architecture)
    logger.info(
        "%s: %s layout, architecture of %s", path, layout, ", ".join(matches) or "no registry entry"
    )
    return _build(
        architecture,
        state,
        device,
        dtype,
        name=str(path),
        preprocessing=preprocessing,
        source=str(path),
    )


def _build(
    architecture: SamArchitecture,
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    *,
    name: str,
    preprocessing: SamPreprocessing,
    source: str,
) -> Sam:
    return checkpoints.build_with_weights(
        lambda: build_sam(architecture, name=name, preprocessing=preprocessing),
        state,
        device=device,
        dtype=dtype,
        source=source,
    )


def _resolve_preprocessing(preprocessing: SamPreprocessing | str | None) -> SamPreprocessing | None:
    if preprocessing is None or isinstance(preprocessing, SamPreprocessing):
        return preprocessing
    try:
        return PREPROCESSING_NAMES[str(preprocessing).lower()]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing {preprocessing!r}; use one of {', '.join(PREPROCESSING_NAMES)} "
            f"or a SamPreprocessing"
        ) from None


def _guess_preprocessing(path: Path) -> SamPreprocessing:
    return MEDSAM_PREPROCESSING if "medsam" in path.name.lower() else SamPreprocessing()


def _variant_of_repo(repo_id: str) -> SamVariant | None:
    for variant in SAM_MODELS.values():
        if variant.hub_repo.lower() == repo_id.lower():
            return variant
    return None


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return (
        len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~")) and "\\" not in text
    )
