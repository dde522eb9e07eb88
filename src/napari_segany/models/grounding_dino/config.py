"""Hyperparameters of Grounding DINO: the Swin image backbone, the BERT text encoder and the detector.

Plain dataclasses (no torch). ``GroundingDinoConfig.from_hub_dict`` reads the ``config.json`` of a
folder in the Hugging Face transformers layout; ``grounding_dino_tiny_config`` /
``grounding_dino_base_config`` are the two released variants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class SwinConfig:
    """Swin transformer image backbone (patch 4, shifted windows, three output stages + one extra)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    num_channels: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    out_indices: tuple[int, ...] = (2, 3, 4)  # stage numbers, 1-based after the stem (0)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the feature maps of ``out_indices`` (stage ``i`` has ``embed_dim * 2**(i-1)``)."""
        return tuple(self.embed_dim * 2 ** (i - 1) for i in self.out_indices)


@dataclass(frozen=True)
class BertConfig:
    """BERT text encoder (bert-base-uncased by default)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0


@dataclass(frozen=True)
class GroundingDinoConfig:
    """The detector: input projections, deformable encoder with text fusion, decoder and heads."""

    backbone: SwinConfig = field(default_factory=SwinConfig)
    text: BertConfig = field(default_factory=BertConfig)
    d_model: int = 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    num_feature_levels: int = 4
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    max_text_len: int = 256
    query_dim: int = 4
    decoder_bbox_embed_share: bool = True
    two_stage_bbox_embed_share: bool = False
    positional_embedding_temperature: float = 20.0
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hub_dict(cls, config: dict) -> GroundingDinoConfig:
        """Build from a transformers ``config.json`` (``model_type`` ``"grounding-dino"``).

        Raises
        ------
        ValueError
            The config describes something else (another model type, a timm or non-Swin
            backbone, one-stage detection, learned position embeddings).
        """
        if config.get("model_type", "grounding-dino") != "grounding-dino":
            raise ValueError(f"config.json is for {config.get('model_type')!r}, not grounding-dino")
        if config.get("use_timm_backbone", False):
            raise ValueError("timm backbones are not supported; use a folder with a Swin backbone")
        if (
            not config.get("two_stage", True)
            or config.get("position_embedding_type", "sine") != "sine"
        ):
            raise ValueError(
                "only two-stage Grounding DINO with sine position embeddings is supported"
            )
        if config.get("activation_function", "relu") != "relu":
            raise ValueError("only the relu activation of the released models is supported")
        backbone = dict(config.get("backbone_config") or {})
        if backbone.get("model_type", "swin") != "swin":
            raise ValueError(
                f"backbone {backbone.get('model_type')!r} is not supported (Swin only)"
            )
        text = dict(config.get("text_config") or {})
        if text.get("model_type", "bert") != "bert":
            raise ValueError(
                f"text encoder {text.get('model_type')!r} is not supported (BERT only)"
            )
        swin = _pick(SwinConfig, backbone)
        if "out_indices" not in backbone and "out_features" in backbone:
            swin["out_indices"] = tuple(
                int(s.replace("stage", "")) for s in backbone["out_features"]
            )
        top = _pick(cls, config)
        top.pop("backbone", None)
        top.pop("text", None)
        return cls(backbone=SwinConfig(**swin), text=BertConfig(**_pick(BertConfig, text)), **top)

    def to_dict(self) -> dict:
        """Plain nested dict of every field."""
        return asdict(self)


def _pick(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key in names:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def grounding_dino_tiny_config() -> GroundingDinoConfig:
    """IDEA-Research/grounding-dino-tiny: Swin-T (embed 96, depths 2-2-6-2, window 7) + BERT-base."""
    return GroundingDinoConfig(backbone=SwinConfig())


def grounding_dino_base_config() -> GroundingDinoConfig:
    """IDEA-Research/grounding-dino-base: Swin-B (embed 128, depths 2-2-18-2, window 12) + BERT-base."""
    return GroundingDinoConfig(
        backbone=SwinConfig(
            embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12
        )
    )
