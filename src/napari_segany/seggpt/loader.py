"""Loading SegGPT from every checkpoint layout: registry name, hub repo, local folder, original ``.pth``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import (
    CheckpointError,
    build_with_weights,
    check_model_source,
    download_from_hub,
    looks_like_path,
    read_config,
    read_folder_state_dict,
    read_state_dict,
)
from ..models.precision import resolve_device, resolve_dtype
from ..models.seggpt import SegGpt, SegGptArchitecture
from .registry import DEFAULT_SEGGPT_MODEL, SEGGPT_MODELS

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_seggpt(
    source: str | os.PathLike = DEFAULT_SEGGPT_MODEL,
    device: str | torch.device | None = "cpu",
    precision: str | torch.dtype = "auto",
    *,
    architecture: SegGptArchitecture | Mapping | None = None,
    original: bool = False,
) -> SegGpt:
    """Load a SegGPT model, ready for inference.

    Parameters
    ----------
    source
        - a registry name (``"seggpt-vit-l"``): downloaded from the Hugging Face Hub once, with a
          progress bar, into the standard cache (transformers layout; with ``original=True`` the
          original ``seggpt_vit_large.pth`` instead);
        - a hub repo id in transformers' layout (``"BAAI/seggpt-vit-large"``);
        - a local folder in that layout (``config.json`` + ``model.safetensors`` or
          ``pytorch_model.bin``); the architecture comes from ``config.json``;
        - an original checkpoint file (``seggpt_vit_large.pth``: state dict under ``"model"``,
          original Painter key names) or a ``.safetensors`` / ``.bin`` file in either layout.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``.
    precision
        ``"auto"`` (bf16 on CUDA and on CPUs with native bf16, fp16 on MPS, else fp32),
        ``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype.
    architecture
        Hyperparameters for a single checkpoint file (which does not record them); by default
        those of ``seggpt-vit-l``, the only original release.
    original
        With a registry name, fetch the original checkpoint instead of the transformers one.

    Returns
    -------
    SegGpt
        In eval mode, without gradients, on ``device`` in the chosen dtype.

    Raises
    ------
    CheckpointError
        Unreadable file, or keys / shapes that do not fit (missing and unexpected keys named).
    WeightsUnavailableError
        Not cached and cannot be downloaded (offline); the message says how to get the weights.
    ValueError
        ``source`` is ``None`` or empty.
    FileNotFoundError
        A path that does not exist and is no registry name or hub id (path-like strings fail at
        once, without a hub look-up).
    """
    check_model_source(source, SEGGPT_MODELS)
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    arch, state, label = _read_source(source, architecture, original)
    model = build_with_weights(lambda: SegGpt(arch), state, device=dev, dtype=dtype, source=label)
    info = _registry_entry(source)
    # Preprocessing comes from the registry entry (the released model's training statistics).
    model.pixel_mean, model.pixel_std = tuple(info.mean), tuple(info.std)
    model.name = info.name if str(source) in SEGGPT_MODELS else str(source)
    logger.info("loaded SegGPT from %s on %s in %s", label, dev, dtype)
    return model


def _registry_entry(source: str | os.PathLike):
    """The registry entry of ``source`` (by name or hub repo), else the default model's."""
    text = str(source)
    if text in SEGGPT_MODELS:
        return SEGGPT_MODELS[text]
    for info in SEGGPT_MODELS.values():
        if text.lower() in (info.hub_repo.lower(), info.original_repo.lower()):
            return info
    return SEGGPT_MODELS[DEFAULT_SEGGPT_MODEL]


def _read_source(
    source: str | os.PathLike, architecture: SegGptArchitecture | Mapping | None, original: bool
) -> tuple[SegGptArchitecture, dict[str, torch.Tensor], str]:
    name = str(source)
    if name in SEGGPT_MODELS and not Path(name).exists():
        info = SEGGPT_MODELS[name]
        if original:
            path = download_from_hub(
                info.original_repo, single_file=info.original_filename, display_name=name
            )
            arch = _architecture(architecture, default=info.architecture)
            return arch, convert_state_dict(read_state_dict(path)), str(path)
        return _read_folder(download_from_hub(info.hub_repo, display_name=name))
    path = Path(source)
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        arch = _architecture(architecture, default=SEGGPT_MODELS[DEFAULT_SEGGPT_MODEL].architecture)
        return arch, convert_state_dict(read_state_dict(path)), str(path)
    if _HUB_ID.match(name) and not looks_like_path(name):
        return _read_folder(
            download_from_hub(
                name, display_name=f"no such file or folder {name!r}; as a hub repo, {name!r}"
            )
        )
    raise FileNotFoundError(
        f"no such file or folder: {name!r} (and it is not a registered model: "
        f"{', '.join(SEGGPT_MODELS)}, nor a hub repo id owner/name)"
    )


def _read_folder(folder: Path) -> tuple[SegGptArchitecture, dict[str, torch.Tensor], str]:
    config = read_config(folder)
    if config.get("model_type", "seggpt") != "seggpt":
        raise CheckpointError(f"{folder} holds a {config.get('model_type')!r} model, not SegGPT")
    try:
        arch = SegGptArchitecture.from_hf_config(config)
    except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{folder}/config.json describes no usable SegGPT: {exc}") from exc
    return arch, convert_state_dict(read_folder_state_dict(folder)), str(folder)


def _architecture(
    architecture: SegGptArchitecture | Mapping | None, *, default: SegGptArchitecture | Mapping
) -> SegGptArchitecture:
    if architecture is None:
        architecture = default
    if isinstance(architecture, SegGptArchitecture):
        return architecture
    return SegGptArchitecture.from_dict(architecture)


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of either checkpoint layout to this package's module names.

    The layout is recognised by its keys: transformers' (``model.embeddings.…``,
    ``model.encoder.layers.{i}.…``, ``decoder.…``) or the original Painter one
    (``patch_embed.proj.…``, ``blocks.{i}.…``, ``decoder_pred.{0,1,3}.…``). Anything else is kept
    as is, so that the strict key check names it.
    """
    if any(key.startswith("blocks.") or key == "pos_embed" for key in state):
        return rename_original_keys(state)
    return rename_transformers_keys(state)


def rename_transformers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ``SegGptForImageSegmentation`` names -> ours (drop the ``model.`` prefix)."""
    return {key.removeprefix("model."): value for key, value in state.items()}


_ORIGINAL_FIXED = {
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "mask_token": "embeddings.mask_token",
    "segment_token_x": "embeddings.segment_token_input",
    "segment_token_y": "embeddings.segment_token_prompt",
    "type_token_cls": "embeddings.type_token_semantic",
    "type_token_ins": "embeddings.type_token_instance",
    "pos_embed": "embeddings.position_embeddings",
    "norm.weight": "encoder.layernorm.weight",
    "norm.bias": "encoder.layernorm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_pred.0.weight": "decoder.decoder_pred.conv.weight",
    "decoder_pred.0.bias": "decoder.decoder_pred.conv.bias",
    "decoder_pred.1.weight": "decoder.decoder_pred.layernorm.weight",
    "decoder_pred.1.bias": "decoder.decoder_pred.layernorm.bias",
    "decoder_pred.3.weight": "decoder.decoder_pred.head.weight",
    "decoder_pred.3.bias": "decoder.decoder_pred.head.bias",
}
_ORIGINAL_BLOCK_PARTS = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn": "attention",
    "mlp.fc1": "mlp.lin1",
    "mlp.fc2": "mlp.lin2",
}
_ORIGINAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn|mlp\.fc1|mlp\.fc2)\.(.+)$")


def rename_original_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Painter ``models_seggpt.SegGPT`` names -> ours."""
    renamed = {}
    for key, value in state.items():
        if key in _ORIGINAL_FIXED:
            renamed[_ORIGINAL_FIXED[key]] = value
            continue
        match = _ORIGINAL_BLOCK.match(key)
        if match:
            index, part, rest = match.groups()
            renamed[f"encoder.layers.{index}.{_ORIGINAL_BLOCK_PARTS[part]}.{rest}"] = value
        else:
            renamed[key] = value
    return renamed
