"""Write a state dict of this package's Grounding DINO in the original IDEA-Research key layout.

The inverse of the loader's renaming, written independently from the release's module names
(``backbone.0``, ``bert``, ``transformer.*``, ``feat_map``, fused ``qkv`` / ``in_proj_*``).
"""

from __future__ import annotations

import re

import torch

_SIMPLE = (
    ("backbone.embeddings.patch_embeddings.projection.", "backbone.0.patch_embed.proj."),
    ("backbone.embeddings.norm.", "backbone.0.patch_embed.norm."),
    ("text_backbone.", "bert."),
    ("text_projection.", "feat_map."),
    ("input_proj_vision.", "input_proj."),
    ("level_embed", "transformer.level_embed"),
    ("query_position_embeddings.", "transformer.tgt_embed."),
    ("enc_output_norm.", "transformer.enc_output_norm."),
    ("enc_output.", "transformer.enc_output."),
    ("encoder_output_bbox_embed.", "transformer.enc_out_bbox_embed."),
    ("decoder.layer_norm.", "transformer.decoder.norm."),
    ("decoder.reference_points_head.", "transformer.decoder.ref_point_head."),
)
_SWIN = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_DEFORMABLE = {
    "self_attn_layer_norm": "norm1",
    "fc1": "linear1",
    "fc2": "linear2",
    "final_layer_norm": "norm2",
}
_TEXT = {
    "fc1": "linear1",
    "fc2": "linear2",
    "layer_norm_before": "norm1",
    "layer_norm_after": "norm2",
    "self_attn.out_proj": "self_attn.out_proj",
}
_FUSION = {
    "vision_param": "gamma_v",
    "text_param": "gamma_l",
    "layer_norm_vision": "layer_norm_v",
    "layer_norm_text": "layer_norm_l",
    "attn.vision_proj": "attn.v_proj",
    "attn.text_proj": "attn.l_proj",
    "attn.values_vision_proj": "attn.values_v_proj",
    "attn.values_text_proj": "attn.values_l_proj",
    "attn.out_vision_proj": "attn.out_v_proj",
    "attn.out_text_proj": "attn.out_l_proj",
}
_DECODER = {
    "self_attn.out_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "norm2",
    "encoder_attn_text.out_proj": "ca_text.out_proj",
    "encoder_attn_text_layer_norm": "catext_norm",
    "encoder_attn_layer_norm": "norm1",
    "encoder_attn": "cross_attn",
    "fc1": "linear1",
    "fc2": "linear2",
    "final_layer_norm": "norm3",
}


def _sub(rest: str, table: dict) -> str:
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old) :]
    raise KeyError(rest)


def to_original_layout(
    state: dict[str, torch.Tensor], decoder_layers: int
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}

    def fuse(name: str, part: str, value: torch.Tensor) -> None:
        fused.setdefault(name, {})[part] = value

    for key, value in state.items():
        if m := re.match(r"backbone\.hidden_states_norms\.stage(\d)\.(.*)", key):
            out[f"backbone.0.norm{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif m := re.match(r"backbone\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key):
            prefix = f"backbone.0.layers.{m.group(1)}.blocks.{m.group(2)}."
            if q := re.match(r"attention\.self\.(query|key|value)\.(weight|bias)", m.group(3)):
                fuse(f"{prefix}attn.qkv.{q.group(2)}", q.group(1), value)
            else:
                out[prefix + _sub(m.group(3), _SWIN)] = value
        elif m := re.match(r"backbone\.encoder\.layers\.(\d+)\.downsample\.(.*)", key):
            out[f"backbone.0.layers.{m.group(1)}.downsample.{m.group(2)}"] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.deformable_layer\.(.*)", key):
            rest = m.group(2)
            rest = rest if rest.startswith("self_attn.") else _sub(rest, _DEFORMABLE)
            out[f"transformer.encoder.layers.{m.group(1)}.{rest}"] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.text_enhancer_layer\.(.*)", key):
            prefix = f"transformer.encoder.text_layers.{m.group(1)}."
            if q := re.match(r"self_attn\.(query|key|value)\.(weight|bias)", m.group(2)):
                fuse(f"{prefix}self_attn.in_proj_{q.group(2)}", q.group(1), value)
            else:
                out[prefix + _sub(m.group(2), _TEXT)] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.fusion_layer\.(.*)", key):
            out[f"transformer.encoder.fusion_layers.{m.group(1)}." + _sub(m.group(2), _FUSION)] = (
                value
            )
        elif m := re.match(r"decoder\.layers\.(\d+)\.(.*)", key):
            prefix = f"transformer.decoder.layers.{m.group(1)}."
            if q := re.match(
                r"(self_attn|encoder_attn_text)\.(query|key|value)\.(weight|bias)", m.group(2)
            ):
                module = "self_attn" if q.group(1) == "self_attn" else "ca_text"
                fuse(f"{prefix}{module}.in_proj_{q.group(3)}", q.group(2), value)
            else:
                out[prefix + _sub(m.group(2), _DECODER)] = value
        elif m := re.match(r"bbox_embed\.0\.(.*)", key):
            for layer in range(decoder_layers):  # the release stores the tied head per layer
                out[f"bbox_embed.{layer}.{m.group(1)}"] = value
                out[f"transformer.decoder.bbox_embed.{layer}.{m.group(1)}"] = value
        else:
            for old, new in _SIMPLE:
                if key.startswith(old):
                    out[new + key[len(old) :]] = value
                    break
            else:
                raise KeyError(key)
    for name, parts in fused.items():
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    out["bert.embeddings.position_ids"] = torch.arange(4)[None]  # a buffer the release carries
    return {"module." + k: v for k, v in out.items()}
