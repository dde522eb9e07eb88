"""Hyperparameters of a SegGPT architecture (plain dataclass, no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


@dataclass(frozen=True)
class SegGptArchitecture:
    """Every hyperparameter a SegGPT model is built from.

    Attributes
    ----------
    image_size
        (height, width) of the stacked input: the prompt pair on top of the target pair, so the
        height is twice the width for square halves (896, 448 for the released model).
    patch_size
        Side of the square patches.
    hidden_size, num_layers, num_heads, mlp_dim
        Width, depth, attention heads and MLP width of the ViT encoder.
    pretrain_image_size
        Side of the square image the absolute position embedding was trained at; the embedding
        holds ``(pretrain_image_size // patch_size) ** 2`` positions plus one (unused) class token.
    merge_index
        Block after which the image stream and the mask stream are averaged into one.
    feature_indices
        Blocks whose (layer-normed) outputs are concatenated for the decoder.
    decoder_hidden_size
        Channels per pixel in the decoder.
    layer_norm_eps, qkv_bias, use_relative_position
        As named.
    """

    image_size: tuple[int, int] = (896, 448)
    patch_size: int = 16
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_dim: int = 4096
    pretrain_image_size: int = 224
    merge_index: int = 2
    feature_indices: tuple[int, ...] = (5, 11, 17, 23)
    decoder_hidden_size: int = 64
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    use_relative_position: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "feature_indices", tuple(int(i) for i in self.feature_indices))
        height, width = self.image_size
        if height % (2 * self.patch_size) or width % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must split into two halves of whole "
                f"{self.patch_size}-pixel patches"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_heads} heads"
            )
        if not self.feature_indices or max(self.feature_indices) >= self.num_layers:
            raise ValueError(
                f"feature_indices {self.feature_indices} must name blocks < {self.num_layers}"
            )
        if len(set(self.feature_indices)) != len(self.feature_indices):
            raise ValueError(f"feature_indices {self.feature_indices} repeat a block")
        if not 0 <= self.merge_index <= min(self.feature_indices):
            raise ValueError(
                f"merge_index {self.merge_index} must be >= 0 and <= the first feature index "
                f"{min(self.feature_indices)}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, columns) of patches of the stacked input."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def half_size(self) -> tuple[int, int]:
        """(height, width) in pixels of one half (prompt or target) of the stacked input."""
        return (self.image_size[0] // 2, self.image_size[1])

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> SegGptArchitecture:
        """Build from a transformers ``SegGptConfig`` dict (``config.json``)."""
        hidden = int(config.get("hidden_size", 1024))
        image_size = config.get("image_size", (896, 448))
        patch = config.get("patch_size", 16)
        if not isinstance(patch, int):
            patch = int(patch[0])
        pretrain = config.get("pretrain_image_size", 224)
        if not isinstance(pretrain, int):
            pretrain = int(pretrain[0])
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"only the exact GELU activation is supported, config has {act!r}")
        mlp_dim = config.get("mlp_dim")
        return cls(
            image_size=_pair(image_size),
            patch_size=int(patch),
            hidden_size=hidden,
            num_layers=int(config.get("num_hidden_layers", 24)),
            num_heads=int(config.get("num_attention_heads", 16)),
            mlp_dim=int(mlp_dim) if mlp_dim is not None else 4 * hidden,
            pretrain_image_size=int(pretrain),
            merge_index=int(config.get("merge_index", 2)),
            feature_indices=tuple(config.get("intermediate_hidden_state_indices", (5, 11, 17, 23))),
            decoder_hidden_size=int(config.get("decoder_hidden_size", 64)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
            qkv_bias=bool(config.get("qkv_bias", True)),
            use_relative_position=bool(config.get("use_relative_position_embeddings", True)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The matching transformers ``SegGptConfig`` keyword arguments."""
        return {
            "image_size": list(self.image_size),
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "pretrain_image_size": self.pretrain_image_size,
            "merge_index": self.merge_index,
            "intermediate_hidden_state_indices": list(self.feature_indices),
            "decoder_hidden_size": self.decoder_hidden_size,
            "layer_norm_eps": self.layer_norm_eps,
            "qkv_bias": self.qkv_bias,
            "use_relative_position_embeddings": self.use_relative_position,
            "hidden_act": "gelu",
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegGptArchitecture:
        """Build from a mapping of field names (as stored in the registry); unknown keys raise."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown SegGPT hyperparameters: {', '.join(unknown)}")
        return cls(**dict(values))
