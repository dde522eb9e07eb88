"""SAM image encoder: a plain ViT with windowed and global attention and a convolutional neck.

Parameter names follow the original segment_anything release (``image_encoder.*``), so an original
checkpoint loads without renaming; other layouts are renamed by the loader.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..fused_linear import patch_embedding
from .layers import FeedForward, LayerNorm2d
from .rel_pos_attention import RelPosAttention


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` convolution: (B, 3, S, S) image -> (B, S/p, S/p, C) tokens."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H / p, W / p, embed_dim), channels last."""
        return patch_embedding(self.proj, x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; attention within ``window_size`` windows, or global if 0."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        window_size: int,
        grid_size: tuple[int, int],
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attn = RelPosAttention(
            embed_dim,
            num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            grid_size=grid_size,
        )
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = FeedForward(embed_dim, mlp_dim, nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = self.attn(self.norm1(x), residual=x)
        return self.mlp(self.norm2(x), residual=x)


class ImageEncoderViT(nn.Module):
    """ViT image encoder: (B, 3, S, S) normalised image -> (B, out_channels, S/p, S/p) embedding."""

    def __init__(
        self,
        *,
        image_size: int = 1024,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        out_channels: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        grid = image_size // patch_size
        self.patch_embed = PatchEmbedding(patch_size, in_channels, embed_dim)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        )
        self.blocks = nn.ModuleList(
            EncoderBlock(
                embed_dim,
                num_heads,
                mlp_dim,
                window_size=0 if i in global_attn_indexes else window_size,
                grid_size=(grid, grid),
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                layer_norm_eps=layer_norm_eps,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(
        self, x: torch.Tensor, *, on_block: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """(B, 3, image_size, image_size) -> (B, out_channels, grid, grid).

        Parameters
        ----------
        x
            Normalised, padded images.
        on_block
            Called as ``on_block(done, total)`` after each transformer block (``done`` from 1 to
            ``total = depth``). An exception raised from it aborts the forward and propagates:
            this is how a long embedding is cancelled within one block.
        """
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        total = len(self.blocks)
        for done, block in enumerate(self.blocks, start=1):
            x = block(x)
            if on_block is not None:
                on_block(done, total)
        return self.neck(x.permute(0, 3, 1, 2))
