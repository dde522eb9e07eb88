"""Fine-tuned SAM models on disk: only what changed, plus a JSON sidecar naming the base.

A saved folder holds ``finetuned.safetensors`` (the trained mask decoder, and in LoRA mode the
adapters of one encoder block, float32) and ``napari_segany_finetune.json`` (base model source and
fingerprint, preprocessing, training settings, label provenance, metrics). ``load_sam(folder)``
recognises the sidecar and calls :func:`load_finetuned_sam`, which loads the base, refuses it when
its fingerprint differs, and rebuilds the model with :func:`assemble_finetuned_sam` -- the same
function training uses, so a saved and reloaded model gives identical outputs.

:func:`export_merged_checkpoint` writes a full checkpoint in the original segment_anything
``.pth`` layout (a flat state dict of tensors), loadable by segment_anything, micro-sam's custom
weights option and :func:`napari_segany.sam.load_sam`.

Reading is safe: JSON and safetensors only; nothing read chooses code to run. Writes are atomic.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_segany.checkpoints import CheckpointError
from napari_segany.training.sidecar import (
    FORMAT,
    FORMAT_VERSION,
    SIDECAR_NAME,
    is_finetuned_folder,
    read_sidecar,
)

__all__ = [
    "SIDECAR_NAME",
    "WEIGHTS_NAME",
    "BaseModelMismatchError",
    "assemble_finetuned_sam",
    "base_fingerprint",
    "export_merged_checkpoint",
    "is_finetuned_folder",
    "load_finetuned_sam",
    "read_sidecar",
    "save_finetuned",
]

WEIGHTS_NAME = "finetuned.safetensors"
DECODER_PREFIX = "mask_decoder."
LORA_PREFIX = "lora.blocks."


class BaseModelMismatchError(CheckpointError):
    """The base model found is not the one a fine-tuned model was trained on."""


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the parts a fine-tuned model keeps from its base (image and prompt encoders).

    Tensors are rounded to bfloat16 before hashing, so the fingerprint is the same whether the
    base was loaded in float32 or bfloat16 (not float16).
    """
    digest = hashlib.sha256()
    for prefix, module in (
        ("image_encoder.", model.image_encoder),
        ("prompt_encoder.", model.prompt_encoder),
    ):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update((prefix + name).encode())
            digest.update(str(tuple(tensor.shape)).encode())
            if tensor.is_floating_point():
                tensor = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16)
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def assemble_finetuned_sam(
    base: nn.Module,
    changed: dict[str, torch.Tensor],
    *,
    lora_alpha: float = 4.0,
    name: str | None = None,
) -> nn.Module:
    """A SAM model made of ``base`` and the ``changed`` tensors; ``base`` itself is not modified.

    The frozen parts (image encoder blocks, neck, prompt encoder) are shared with ``base``, not
    copied; the mask decoder is a new module; in LoRA mode the adapted encoder block is a new
    module with the adapters merged into its ``qkv`` weight.

    Parameters
    ----------
    base
        The base :class:`~napari_segany.models.sam.Sam`.
    changed
        ``"mask_decoder.<name>"`` -> tensor for every decoder parameter and buffer, and
        ``"lora.blocks.<i>.{q_down,q_up,v_down,v_up}"`` for an adapted encoder block.
    lora_alpha
        Scale numerator of the adapters.
    name
        ``.name`` of the model (default: the base's name + " (fine-tuned)").
    """
    from napari_segany.models.sam import Sam
    from napari_segany.training.lora import merged_block

    decoder = copy.deepcopy(base.mask_decoder)
    decoder_state = {
        key[len(DECODER_PREFIX) :]: value
        for key, value in changed.items()
        if key.startswith(DECODER_PREFIX)
    }
    try:
        decoder.load_state_dict(decoder_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"fine-tuned decoder does not fit the base model: {exc}") from exc
    encoder = base.image_encoder
    adapters: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in changed.items():
        if key.startswith(LORA_PREFIX):
            index, part = key[len(LORA_PREFIX) :].split(".")
            adapters.setdefault(int(index), {})[part] = value
    if adapters:
        encoder = _encoder_with_blocks(
            base.image_encoder,
            {
                index: merged_block(base.image_encoder.blocks[index], parts, alpha=lora_alpha)
                for index, parts in adapters.items()
            },
        )
    model = Sam(
        encoder,
        base.prompt_encoder,
        decoder,
        name=name or f"{base.name} (fine-tuned)",
        preprocessing=base.preprocessing,
    )
    model.architecture = getattr(base, "architecture", None)
    return model.eval().requires_grad_(False)


def _encoder_with_blocks(encoder: nn.Module, replaced: dict[int, nn.Module]) -> nn.Module:
    """A shallow copy of an image encoder sharing every module except the ``replaced`` blocks."""
    out = copy.copy(encoder)
    out._modules = dict(encoder._modules)
    out._parameters = dict(encoder._parameters)
    out._buffers = dict(encoder._buffers)
    blocks = nn.ModuleList(list(encoder.blocks))
    for index, block in replaced.items():
        blocks[index] = block
    out._modules["blocks"] = blocks
    return out


def save_finetuned(
    folder: str | os.PathLike,
    changed: dict[str, torch.Tensor],
    sidecar: dict[str, Any],
) -> Path:
    """Write ``changed`` (safetensors) and ``sidecar`` (JSON, written last) into ``folder``.

    Returns the folder. Each file is written under a temporary name and renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in changed.items()
    }
    weights_tmp = folder / f".{WEIGHTS_NAME}.{uuid.uuid4().hex}.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": FORMAT})
    os.replace(weights_tmp, folder / WEIGHTS_NAME)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": WEIGHTS_NAME}
    document.update(sidecar)
    sidecar_tmp = folder / f".{SIDECAR_NAME}.{uuid.uuid4().hex}.tmp"
    sidecar_tmp.write_text(json.dumps(_jsonable(document), indent=2))
    os.replace(sidecar_tmp, folder / SIDECAR_NAME)
    return folder


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def load_finetuned_sam(
    folder: str | os.PathLike,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype = "auto",
    *,
    base: str | os.PathLike | None = None,
) -> nn.Module:
    """Load a fine-tuned SAM model: its base model plus the saved changes.

    Parameters
    ----------
    folder
        A folder written by :meth:`FinetuneResult.save <napari_segany.training.FinetuneResult.save>`.
    device, precision
        As :func:`napari_segany.sam.load_sam`.
    base
        Where to find the base model when it has moved (a registry name, folder or file);
        default: the source recorded in the sidecar.

    Raises
    ------
    BaseModelMismatchError
        The base model's fingerprint differs from the one recorded at training time.
    napari_segany.checkpoints.CheckpointError
        Unreadable sidecar or weights, or weights that do not fit the base.
    """
    from napari_segany.checkpoints import read_state_dict
    from napari_segany.sam.loader import load_sam
    from napari_segany.sam.registry import SamPreprocessing

    folder = Path(folder).expanduser()
    sidecar = read_sidecar(folder)
    recorded = sidecar.get("base", {})
    source = os.fspath(base) if base is not None else recorded.get("source")
    if not source:
        raise CheckpointError(f"{folder}: the sidecar names no base model; pass base=...")
    prep = sidecar.get("preprocessing") or {}
    preprocessing = (
        SamPreprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()})
        if prep
        else None
    )
    base_model = load_sam(source, device, precision, preprocessing=preprocessing)
    found = base_fingerprint(base_model)
    if recorded.get("fingerprint") and found != recorded["fingerprint"]:
        raise BaseModelMismatchError(
            f"{folder} was fine-tuned from a different base model than {source!r} "
            f"(fingerprint {found[:12]}..., expected {recorded['fingerprint'][:12]}...); "
            f"pass the original base with base=..."
        )
    changed = read_state_dict(folder / sidecar.get("weights", WEIGHTS_NAME))
    lora = sidecar.get("lora") or {}
    model = assemble_finetuned_sam(
        base_model, changed, lora_alpha=float(lora.get("alpha", 4.0)), name=str(folder)
    )
    model.finetune_sidecar = sidecar
    return model


def export_merged_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a complete checkpoint of ``model`` in the original segment_anything layout.

    The file is a flat ``{name: tensor}`` state dict (float32, no pickled objects besides
    tensors) with the original key names, as ``sam_vit_b_01ec64.pth``: segment_anything's
    ``sam_model_registry[...](checkpoint=path)``, micro-sam's custom weights and
    :func:`napari_segany.sam.load_sam` read it. Load the base in float32 before exporting to
    keep the unchanged weights bit-identical to the base checkpoint.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        key: value.detach().to("cpu", torch.float32).contiguous().clone()
        for key, value in model.state_dict().items()
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
