"""Renaming Grounding DINO checkpoints into this package's parameter names, in one place.

Two layouts are read:

* the Hugging Face transformers layout (``model.backbone.conv_encoder.model.*``,
  ``model.text_backbone.*``, ``model.encoder.layers.N.fusion_layer.*``, ``bbox_embed.N.*``), as in
  ``IDEA-Research/grounding-dino-tiny`` and what ``save_pretrained`` writes;
* the original IDEA-Research release (``groundingdino_swint_ogc.pth``,
  ``groundingdino_swinb_cogcoor.pth``: ``backbone.0.*``, ``bert.*``, ``transformer.*``,
  ``feat_map``, fused ``qkv`` / ``in_proj_weight`` attention matrices).

Only tensors are renamed or split; nothing read from a file chooses code to run.
"""

from __future__ import annotations

import re

import torch

from napari_segany.models.grounding_dino.config import GroundingDinoConfig

# Whole-name prefixes of the original release → transformers-style names (without "model.").
_ORIGINAL_PREFIXES = (
    ("backbone.0.patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection."),
    ("backbone.0.patch_embed.norm.", "backbone.embeddings.norm."),
    ("backbone.0.layers.", "backbone.encoder.layers."),
    ("bert.", "text_backbone."),
    ("feat_map.", "text_projection."),
    ("input_proj.", "input_proj_vision."),
    ("transformer.level_embed", "level_embed"),
    ("transformer.tgt_embed.", "query_position_embeddings."),
    ("transformer.enc_output_norm.", "enc_output_norm."),
    ("transformer.enc_output.", "enc_output."),
    ("transformer.enc_out_bbox_embed.", "encoder_output_bbox_embed."),
    ("transformer.decoder.norm.", "decoder.layer_norm."),
    ("transformer.decoder.ref_point_head.", "decoder.reference_points_head."),
    ("transformer.decoder.bbox_embed.", "decoder.bbox_embed."),
    ("transformer.encoder.text_layers.", "encoder.text_layers."),
    ("transformer.encoder.fusion_layers.", "encoder.fusion_layers."),
    ("transformer.encoder.layers.", "encoder.deformable_layers."),
    ("transformer.decoder.layers.", "decoder.layers."),
)
# Inside-name parts of the original release, per module kind.
_ORIGINAL_SWIN_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_ORIGINAL_DEFORMABLE = {
    "norm1": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm2": "final_layer_norm",
}
_ORIGINAL_TEXT_ENHANCER = {
    "linear1": "fc1",
    "linear2": "fc2",
    "norm1": "layer_norm_before",
    "norm2": "layer_norm_after",
}
_ORIGINAL_FUSION = {
    "gamma_v": "vision_param",
    "gamma_l": "text_param",
    "layer_norm_v": "layer_norm_vision",
    "layer_norm_l": "layer_norm_text",
    "attn.v_proj": "attn.vision_proj",
    "attn.l_proj": "attn.text_proj",
    "attn.values_v_proj": "attn.values_vision_proj",
    "attn.values_l_proj": "attn.values_text_proj",
    "attn.out_v_proj": "attn.out_vision_proj",
    "attn.out_l_proj": "attn.out_text_proj",
}
_ORIGINAL_DECODER = {
    "cross_attn": "encoder_attn",
    "norm1": "encoder_attn_layer_norm",
    "ca_text": "encoder_attn_text",
    "catext_norm": "encoder_attn_text_layer_norm",
    "norm2": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "final_layer_norm",
}
# Keys that hold no learned weights of ours (buffers, unused heads, tied duplicates).
_DROPPED = re.compile(
    r"(relative_position_index$|position_ids$|num_batches_tracked$|^text_backbone\.pooler\."
    r"|^backbone\.swin\.layernorm\.|^backbone\.layernorm\.|^backbone\.norm\.|^decoder\.bbox_embed\."
    r"|^decoder\.class_embed\.|^class_embed\.|^label_enc\.)"
)


def is_original_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the original IDEA-Research release names."""
    return any(k.startswith(("backbone.0.", "transformer.", "module.backbone.0.")) for k in state)


def rename_grounding_dino_keys(
    state: dict[str, torch.Tensor], config: GroundingDinoConfig
) -> dict[str, torch.Tensor]:
    """Rename (and split fused attention matrices of) a checkpoint to ``GroundingDino`` names.

    Parameters
    ----------
    state
        Tensors from a transformers-layout or an original-release checkpoint.
    config
        Architecture, needed for the widths when splitting fused q/k/v matrices and to know
        whether the box head is shared between decoder layers.

    Returns
    -------
    dict
        New dict; unknown keys are passed through unchanged so that a strict load names them.
    """
    if is_original_layout(state):
        state = _original_to_transformers(state, config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        key = key.replace("model.backbone.conv_encoder.model.", "backbone.", 1)
        key = key.removeprefix("model.")
        if _DROPPED.search(key):
            continue
        match = re.match(r"bbox_embed\.(\d+)\.(.*)", key)
        if match and config.decoder_bbox_embed_share and match.group(1) != "0":
            continue  # tied copies of bbox_embed.0
        out[key] = value
    return out


def _original_to_transformers(
    state: dict[str, torch.Tensor], config: GroundingDinoConfig
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    d = config.d_model
    for key, value in state.items():
        key = key.removeprefix("module.")
        norm = re.match(r"backbone\.0\.norm(\d+)\.(weight|bias)$", key)
        if norm:
            out[f"backbone.hidden_states_norms.stage{int(norm.group(1)) + 1}.{norm.group(2)}"] = (
                value
            )
            continue
        for old, new in _ORIGINAL_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        block = re.match(r"(backbone\.encoder\.layers\.\d+\.blocks\.\d+\.)(.*)", key)
        if block:
            prefix, rest = block.groups()
            if rest.startswith("attn.qkv."):
                _split_three(out, prefix + "attention.self.", rest.rsplit(".", 1)[1], value)
                continue
            key = prefix + _replace_head(rest, _ORIGINAL_SWIN_BLOCK)
        elif (m := re.match(r"encoder\.deformable_layers\.(\d+)\.(.*)", key)) is not None:
            key = f"encoder.layers.{m.group(1)}.deformable_layer." + _replace_head(
                m.group(2), _ORIGINAL_DEFORMABLE
            )
        elif (m := re.match(r"encoder\.text_layers\.(\d+)\.(.*)", key)) is not None:
            prefix = f"encoder.layers.{m.group(1)}.text_enhancer_layer."
            if m.group(2).startswith("self_attn.in_proj_"):
                _split_three(out, prefix + "self_attn.", _in_proj_kind(m.group(2)), value, d)
                continue
            key = prefix + _replace_head(m.group(2), _ORIGINAL_TEXT_ENHANCER)
        elif (m := re.match(r"encoder\.fusion_layers\.(\d+)\.(.*)", key)) is not None:
            key = f"encoder.layers.{m.group(1)}.fusion_layer." + _replace_head(
                m.group(2), _ORIGINAL_FUSION
            )
        elif (m := re.match(r"(decoder\.layers\.\d+\.)(.*)", key)) is not None:
            prefix, rest = m.groups()
            rest = _replace_head(rest, _ORIGINAL_DECODER)
            attn = re.match(r"(self_attn|encoder_attn_text)\.in_proj_(weight|bias)$", rest)
            if attn:
                _split_three(out, f"{prefix}{attn.group(1)}.", attn.group(2), value, d)
                continue
            key = prefix + rest
        out[key] = value
    return out


def _replace_head(rest: str, table: dict[str, str]) -> str:
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old) :]
    return rest


def _in_proj_kind(rest: str) -> str:
    return "weight" if rest.endswith("weight") else "bias"


def _split_three(
    out: dict[str, torch.Tensor], prefix: str, kind: str, value: torch.Tensor, width: int = 0
) -> None:
    """Split a fused (3·C, ...) q/k/v tensor into ``query``, ``key``, ``value``."""
    width = width or value.shape[0] // 3
    for index, name in enumerate(("query", "key", "value")):
        out[f"{prefix}{name}.{kind}"] = value[index * width : (index + 1) * width].clone()
