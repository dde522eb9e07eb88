"""SAM image encoder: a plain ViT with windowed and global attention and a convolutional neck.

Parameter names follow the original segment_anything release (``image_encoder.*``), so an original
checkpoint loads without renaming; other layouts are renamed by the loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeedForward, LayerNorm2d
from .rel_pos_attention import RelPosAttention


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` convolution: (B, 3, S, S) image -> (B, S/p, S/p, C) tokens."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H / p, W / p, embed_dim), channels last."""
        return self.proj(x).permute(0, 2, 3, 1)


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
            grid_size=(window_size, window_size) if window_size > 0 else grid_size,
        )
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = FeedForward(embed_dim, mlp_dim, nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            windows, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded, (height, width))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into (B * n_windows, window, window, C), zero-padding bottom and right.

    Returns the windows and the padded (height, width).
    """
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, hp // window_size, window_size, wp // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * n_windows, w, w, C) -> (B, H, W, C), padding cut."""
    hp, wp = padded
    height, width = size
    batch = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, -1)
    if hp > height or wp > width:
        x = x[:, :height, :width, :]
    return x


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) -> (B, out_channels, grid, grid)."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
