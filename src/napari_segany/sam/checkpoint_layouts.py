"""SAM checkpoint layouts: recognise them, rename their keys, read their architecture.

Two layouts exist in the wild:

* ``"original"``: the segment_anything release (``image_encoder.*``, ``prompt_encoder.*``,
  ``mask_decoder.*``), also used by MedSAM and SlimSAM's uniform ``.pth`` files. This package's
  module names follow it, so its renaming is the identity.
* ``"transformers"``: Hugging Face ``SamModel`` (``vision_encoder.*``, ``shared_image_embedding.*``).

Each layout has one renaming function; the architecture comes from ``config.json`` or, for a bare
weights file, from the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields

import torch

from napari_segany.checkpoints import CheckpointError
from napari_segany.sam.registry import SAM_MODELS, SamArchitecture

ORIGINAL = "original"
TRANSFORMERS = "transformers"

_ORIGINAL_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_TRANSFORMERS_MARKERS = ("vision_encoder.", "shared_image_embedding.")
_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def detect_layout(state_dict: Mapping[str, torch.Tensor], source: str = "") -> str:
    """``"original"`` or ``"transformers"``; :class:`CheckpointError` for anything else."""
    keys = list(state_dict)
    if any(k.startswith(_TRANSFORMERS_MARKERS) for k in keys):
        return TRANSFORMERS
    if any(k.startswith("image_encoder.") for k in keys) and all(
        k.startswith(_ORIGINAL_PREFIXES) for k in keys
    ):
        return ORIGINAL
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    raise CheckpointError(
        f"{source or 'checkpoint'} is not a SAM checkpoint in a known layout (expected the original "
        f"segment_anything keys image_encoder.*/prompt_encoder.*/mask_decoder.* or transformers' "
        f"SamModel keys vision_encoder.*); its keys start: {shown}"
    )


def rename_original_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original layout is this package's layout: keys are kept (tensors are not copied)."""
    return dict(state_dict)


_TRANSFORMERS_RULES: tuple[tuple[str, str], ...] = (
    (r"^shared_image_embedding\.positional_embedding$", _GAUSSIAN),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$", _GAUSSIAN),
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.layer_norm(\d)\.", r"\1.norm\2."),
    (
        r"^mask_decoder\.transformer\.layer_norm_final_attn\.",
        "mask_decoder.transformer.norm_final_attn.",
    ),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
)
_FEED_FORWARD = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.(\d+)|proj_out)\.(.+)$"
)


def rename_transformers_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers ``SamModel`` keys to the original layout (tensors are not copied).

    The positional-encoding matrix is tied in transformers (``shared_image_embedding`` and
    ``prompt_encoder.shared_embedding``); files may hold either name or both, and one is kept.
    Keys no rule knows are kept as they are, so the strict key check names them.
    """
    hidden_layers: dict[str, int] = {}
    for key in state_dict:
        match = _FEED_FORWARD.match(key)
        if match and match.group(3) is not None:
            hidden_layers[match.group(1)] = max(
                hidden_layers.get(match.group(1), 0), int(match.group(3)) + 1
            )
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _FEED_FORWARD.match(key)
        if match:
            prefix, part, hidden, rest = match.groups()
            index = (
                0
                if part == "proj_in"
                else (int(hidden) + 1 if hidden is not None else hidden_layers.get(prefix, 0) + 1)
            )
            new = f"{prefix}.layers.{index}.{rest}"
        else:
            new = key
            for pattern, replacement in _TRANSFORMERS_RULES:
                new, count = re.subn(pattern, replacement, new)
                if count:
                    break
        if new == _GAUSSIAN and new in renamed:
            continue  # the tied copy
        if new in renamed:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (one of them is {key!r})")
        renamed[new] = tensor
    return renamed


def rename_to_original(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> dict[str, torch.Tensor]:
    """Dispatch to the renaming function of ``layout``."""
    if layout == TRANSFORMERS:
        return rename_transformers_keys(state_dict)
    return rename_original_keys(state_dict)


def architecture_from_transformers_config(config: Mapping) -> SamArchitecture:
    """The architecture described by a transformers ``SamConfig`` ``config.json``.

    Missing fields take transformers' defaults (SlimSAM's files only list the pruned widths).
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"config.json must hold an object, not a {type(config).__name__}")
    if config.get("model_type") not in (None, "sam"):
        raise CheckpointError(
            f"config.json describes a {config.get('model_type')!r} model, not SAM"
        )
    try:
        return _architecture_from_config(config)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"config.json describes no usable SAM model: {exc}") from exc


def _architecture_from_config(config: Mapping) -> SamArchitecture:
    vision = dict(config.get("vision_config") or {})
    prompt = dict(config.get("prompt_encoder_config") or {})
    decoder = dict(config.get("mask_decoder_config") or {})
    hidden = int(vision.get("hidden_size", 768))
    mlp_dim = vision.get("mlp_dim")
    if mlp_dim is None:
        mlp_dim = int(hidden * float(vision.get("mlp_ratio", 4.0)))
    return SamArchitecture(
        image_size=int(vision.get("image_size", 1024)),
        patch_size=int(vision.get("patch_size", 16)),
        encoder_embed_dim=hidden,
        encoder_depth=int(vision.get("num_hidden_layers", 12)),
        encoder_num_heads=int(vision.get("num_attention_heads", 12)),
        encoder_mlp_dim=int(mlp_dim),
        encoder_global_attn_indexes=tuple(
            int(i) for i in vision.get("global_attn_indexes", (2, 5, 8, 11))
        ),
        encoder_window_size=int(vision.get("window_size", 14)),
        encoder_qkv_bias=bool(vision.get("qkv_bias", True)),
        encoder_use_abs_pos=bool(vision.get("use_abs_pos", True)),
        encoder_use_rel_pos=bool(vision.get("use_rel_pos", True)),
        encoder_layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
        prompt_embed_dim=int(vision.get("output_channels", prompt.get("hidden_size", 256))),
        mask_in_chans=int(prompt.get("mask_input_channels", 16)),
        decoder_depth=int(decoder.get("num_hidden_layers", 2)),
        decoder_num_heads=int(decoder.get("num_attention_heads", 8)),
        decoder_mlp_dim=int(decoder.get("mlp_dim", 2048)),
        decoder_attention_downsample_rate=int(decoder.get("attention_downsample_rate", 2)),
        decoder_layer_norm_eps=float(decoder.get("layer_norm_eps", 1e-6)),
        num_multimask_outputs=int(decoder.get("num_multimask_outputs", 3)),
        iou_head_depth=int(decoder.get("iou_head_depth", 3)),
        iou_head_hidden_dim=int(decoder.get("iou_head_hidden_dim", 256)),
    )


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for k in state_dict if (m := regex.match(k))}
    return max(indices) + 1 if indices else 0


def architecture_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "", layer_norm_eps: float = 1e-5
) -> SamArchitecture:
    """Recognise the architecture of an original-layout state dict from its tensor shapes.

    The encoder's head count is read from the relative position tables (their width is the head
    width); the decoder's head count is not visible in shapes and is taken as 8 (every release).
    """
    try:
        patch_weight = state_dict["image_encoder.patch_embed.proj.weight"]
        embed_dim, _, patch_size, _ = patch_weight.shape
        depth = _count(state_dict, r"^image_encoder\.blocks\.(\d+)\.norm1\.weight$")
        pos_embed = state_dict.get("image_encoder.pos_embed")
        default = SamArchitecture()
        grid = (
            int(pos_embed.shape[1]) if pos_embed is not None else default.image_size // patch_size
        )
        use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in state_dict
        global_indexes: list[int] = []
        window_size = default.encoder_window_size
        num_heads = None
        if use_rel_pos:
            for i in range(depth):
                rows, head_dim = state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape
                num_heads = embed_dim // head_dim
                if rows == 2 * grid - 1:
                    global_indexes.append(i)
                else:
                    window_size = (rows + 1) // 2
        else:
            num_heads = _heads_from_registry(embed_dim, depth)
        prompt_dim = state_dict["image_encoder.neck.0.weight"].shape[0]
        decoder_internal = state_dict[
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
        ].shape[0]
        return SamArchitecture(
            image_size=grid * int(patch_size),
            patch_size=int(patch_size),
            encoder_embed_dim=int(embed_dim),
            encoder_depth=depth,
            encoder_num_heads=int(num_heads),
            encoder_mlp_dim=int(state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]),
            encoder_global_attn_indexes=tuple(global_indexes),
            encoder_window_size=int(window_size),
            encoder_qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state_dict,
            encoder_use_abs_pos=pos_embed is not None,
            encoder_use_rel_pos=use_rel_pos,
            prompt_embed_dim=int(prompt_dim),
            mask_in_chans=int(state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            decoder_depth=_count(
                state_dict, r"^mask_decoder\.transformer\.layers\.(\d+)\.norm1\.weight$"
            ),
            decoder_num_heads=8,
            decoder_mlp_dim=int(
                state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
            ),
            decoder_attention_downsample_rate=int(prompt_dim // decoder_internal),
            decoder_layer_norm_eps=layer_norm_eps,
            num_multimask_outputs=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            iou_head_depth=_count(
                state_dict, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$"
            ),
            iou_head_hidden_dim=int(
                state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
            ),
        )
    except (KeyError, ValueError, IndexError, TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"could not recognise the SAM architecture of {source or 'the checkpoint'} from its tensor "
            f"shapes ({type(exc).__name__}: {exc})"
        ) from exc


def _heads_from_registry(embed_dim: int, depth: int) -> int:
    for variant in SAM_MODELS.values():
        arch = variant.architecture
        if arch.encoder_embed_dim == embed_dim and arch.encoder_depth == depth:
            return arch.encoder_num_heads
    raise ValueError(
        f"no relative position tables and no known variant with width {embed_dim}, depth {depth}"
    )


def matching_variant_names(architecture: SamArchitecture) -> list[str]:
    """Registry names whose architecture equals ``architecture`` (ignoring layer-norm epsilons)."""
    ignore = {"decoder_layer_norm_eps", "encoder_layer_norm_eps"}

    def numbers(arch: SamArchitecture) -> tuple:
        return tuple(getattr(arch, f.name) for f in fields(arch) if f.name not in ignore)

    return [
        name for name, v in SAM_MODELS.items() if numbers(v.architecture) == numbers(architecture)
    ]


def architecture_differences(expected: SamArchitecture, found: SamArchitecture) -> list[str]:
    """``"field: expected vs found"`` for every number that differs (layer-norm epsilons aside)."""
    ignore = {"decoder_layer_norm_eps", "encoder_layer_norm_eps"}
    return [
        f"{f.name}: {getattr(expected, f.name)} vs {getattr(found, f.name)}"
        for f in fields(expected)
        if f.name not in ignore and getattr(expected, f.name) != getattr(found, f.name)
    ]
