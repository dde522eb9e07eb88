"""Swin transformer image backbone of Grounding DINO (shifted-window attention, patch merging).

Returns the normalized feature maps of the configured stages (Grounding DINO: stages 2, 3, 4 at
strides 8, 16, 32). Windows are always partitioned and shifted, also when a feature map is smaller
than a window, as in the released detector. Parameter names follow the transformers checkpoint
layout (``embeddings``, ``encoder.layers.N.blocks.M.attention.self.query`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SwinConfig


class SwinPatchEmbeddings(nn.Module):
    """Non-overlapping ``patch_size`` convolution; pads the image right/bottom to a multiple."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, config.patch_size, stride=config.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        pad_w = (-width) % self.patch_size
        pad_h = (-height) % self.patch_size
        if pad_w or pad_h:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return self.projection(pixels)


class SwinEmbeddings(nn.Module):
    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.patch_embeddings = SwinPatchEmbeddings(config)
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, H/4, W/4, C) channels-last."""
        return self.norm(self.patch_embeddings(pixels).permute(0, 2, 3, 1))


class SwinSelfAttention(nn.Module):
    """Query/key/value projections and the learned relative position bias of one window."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer(
            "relative_position_index", _relative_position_index(window_size), persistent=False
        )

    def reset_buffers(self) -> None:
        """Recompute the non-persistent index (after building on the meta device)."""
        self.relative_position_index = _relative_position_index(self.window_size).to(
            self.relative_position_bias_table.device
        )

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, ws², ws²) additive bias."""
        area = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(area, area, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(num_windows·B, ws², C) → same; ``mask`` (num_windows, ws², ws²) additive or None."""
        n, length, dim = windows.shape
        head_dim = dim // self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, length, self.num_heads, head_dim).transpose(1, 2)

        bias = self.relative_position_bias().to(windows.dtype).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias + mask.to(windows.dtype)[:, None]).repeat(n // num_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            heads(self.query(windows)), heads(self.key(windows)), heads(self.value(windows)), bias
        )
        return out.transpose(1, 2).reshape(n, length, dim)


class SwinSelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)


class SwinAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.self = SwinSelfAttention(dim, num_heads, window_size, qkv_bias)
        self.output = SwinSelfOutput(dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output.dense(self.self(windows, mask))


class SwinDense(nn.Module):
    """A Linear stored under ``dense`` (the checkpoint's ``intermediate.dense`` / ``output.dense``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, out_dim)


class SwinBlock(nn.Module):
    """(Shifted) window attention and MLP, both pre-norm residual."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, shift_size: int) -> None:
        super().__init__()
        self.window_size = config.window_size
        self.shift_size = shift_size
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = SwinAttention(dim, num_heads, config.window_size, config.qkv_bias)
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        hidden = int(config.mlp_ratio * dim)
        self.intermediate = SwinDense(dim, hidden)
        self.output = SwinDense(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) channels-last → same."""
        batch, height, width, dim = x.shape
        ws = self.window_size
        shortcut = x
        x = self.layernorm_before(x)
        pad_h, pad_w = (-height) % ws, (-width) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        mask = None
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = _shift_mask(padded_h, padded_w, ws, self.shift_size, x.device)
        windows = _window_partition(x, ws).reshape(-1, ws * ws, dim)
        windows = self.attention(windows, mask).reshape(-1, ws, ws, dim)
        x = _window_reverse(windows, ws, padded_h, padded_w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + x[:, :height, :width, :]
        y = self.layernorm_after(x)
        y = self.output.dense(F.gelu(self.intermediate.dense(y)))
        return x + y


class SwinPatchMerging(nn.Module):
    """2×2 neighbourhood → channels ×4 → LayerNorm → Linear to ×2 channels (stride doubles)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, config: SwinConfig, index: int) -> None:
        super().__init__()
        dim = config.embed_dim * 2**index
        shift = config.window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(config, dim, config.num_heads[index], 0 if i % 2 == 0 else shift)
            for i in range(config.depths[index])
        )
        last = index == len(config.depths) - 1
        self.downsample = None if last else SwinPatchMerging(dim)


class SwinEncoder(nn.Module):
    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SwinStage(config, i) for i in range(len(config.depths)))


class SwinBackbone(nn.Module):
    """Swin image backbone returning normalized multi-scale feature maps.

    Parameters
    ----------
    config
        Architecture; ``out_indices`` (1-based stage numbers) select the returned maps.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = SwinEmbeddings(config)
        self.encoder = SwinEncoder(config)
        self.hidden_states_norms = nn.ModuleDict(
            {
                f"stage{i}": nn.LayerNorm(c)
                for i, c in zip(config.out_indices, config.out_channels, strict=False)
            }
        )

    def forward(self, pixels: torch.Tensor, on_block=None) -> list[torch.Tensor]:
        """(B, 3, H, W) normalized pixels → list of (B, C_i, H_i, W_i) maps, one per out index.

        ``on_block(done, total)`` is called after every Swin block (for progress and cancelling).
        """
        x = self.embeddings(pixels)
        total = sum(self.config.depths)
        done = 0
        maps = []
        for index, stage in enumerate(self.encoder.layers):
            for block in stage.blocks:
                x = block(x)
                done += 1
                if on_block is not None:
                    on_block(done, total)
            name = f"stage{index + 1}"
            if name in self.hidden_states_norms:
                maps.append(self.hidden_states_norms[name](x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return maps


def _relative_position_index(window_size: int) -> torch.Tensor:
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    batch, height, width, dim = x.shape
    x = x.view(batch, height // ws, ws, width // ws, ws, dim).transpose(2, 3)
    return x.reshape(-1, ws, ws, dim)


def _window_reverse(windows: torch.Tensor, ws: int, height: int, width: int) -> torch.Tensor:
    dim = windows.shape[-1]
    x = windows.reshape(-1, height // ws, width // ws, ws, ws, dim).transpose(2, 3)
    return x.reshape(-1, height, width, dim)


def _shift_mask(height: int, width: int, ws: int, shift: int, device) -> torch.Tensor:
    """(num_windows, ws², ws²): 0 within a shifted region, -100 across regions."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_region = (rows >= height - ws).long() + (rows >= height - shift).long()
    col_region = (cols >= width - ws).long() + (cols >= width - shift).long()
    regions = (row_region[:, None] * 3 + col_region[None, :]).float()[None, :, :, None]
    regions = _window_partition(regions, ws).reshape(-1, ws * ws)
    diff = regions[:, None, :] - regions[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)
