"""SegGPT decoder: encoder features -> per-pixel features -> the painted mask as an RGB image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SegGptArchitecture


class SegGptDecoderHead(nn.Module):
    """3x3 conv, channel LayerNorm, GELU, 1x1 conv to RGB (names as transformers)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.layernorm = nn.LayerNorm(channels, eps=eps)
        self.head = nn.Conv2d(channels, 3, kernel_size=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) channels-last pixel features -> (B, 3, H, W) normalised RGB."""
        hidden = self.conv(pixels.permute(0, 3, 1, 2))  # channels_last memory layout, no copy
        hidden = F.gelu(self.layernorm(hidden.permute(0, 2, 3, 1)))
        rgb = F.linear(hidden, self.head.weight.flatten(1), self.head.bias)
        return rgb.permute(0, 3, 1, 2)


class SegGptDecoder(nn.Module):
    """Concatenate the encoder features, unfold every token into ``patch x patch`` pixels, paint.

    Parameter names follow transformers' ``SegGptDecoder``.
    """

    def __init__(self, arch: SegGptArchitecture) -> None:
        super().__init__()
        self.patch_size = arch.patch_size
        self.channels = arch.decoder_hidden_size
        self.decoder_embed = nn.Linear(
            arch.hidden_size * len(arch.feature_indices), arch.patch_size**2 * self.channels
        )
        self.decoder_pred = SegGptDecoderHead(self.channels, arch.layer_norm_eps)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Paint the mask.

        Parameters
        ----------
        features
            Encoder features, each (B, rows, cols, C).

        Returns
        -------
        torch.Tensor
            (B, 3, rows * patch, cols * patch) colour mask, normalised with the ImageNet mean and
            std like the inputs. Zero padding is used above the first and below the last row.
        """
        tokens = self.decoder_embed(torch.cat(features, dim=-1))
        batch, rows, cols, _ = tokens.shape
        p = self.patch_size
        # Token (r, c) holds its p x p pixels in (pixel row, pixel col, channel) order.
        pixels = tokens.reshape(batch, rows, cols, p, p, self.channels).permute(0, 1, 3, 2, 4, 5)
        pixels = pixels.reshape(batch, rows * p, cols * p, self.channels)
        return self.decoder_pred(pixels)
