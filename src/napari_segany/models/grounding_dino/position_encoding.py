"""Sinusoidal position encodings of Grounding DINO: 2-D for feature maps, 1-D per coordinate."""

from __future__ import annotations

import math

import torch


def _frequencies(num_feats: int, temperature: float, device) -> torch.Tensor:
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """(..., F) angles → (..., F): sin of even, cos of odd frequencies, interleaved pairwise."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def feature_map_position_embedding(
    height: int, width: int, d_model: int, temperature: float, device
) -> torch.Tensor:
    """Sine embedding of an unpadded (height, width) map → (height·width, d_model) float32.

    Rows and columns are numbered 1..n, normalized to (0, 2π]; the first half of the channels
    encode the row, the second half the column.
    """
    eps = 1e-6
    half = d_model // 2
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    rows = rows / (height + eps) * 2 * math.pi
    cols = cols / (width + eps) * 2 * math.pi
    freq = _frequencies(half, temperature, device)
    pos_y = _interleave_sin_cos(rows[:, None] / freq)  # (H, half)
    pos_x = _interleave_sin_cos(cols[:, None] / freq)  # (W, half)
    grid = torch.cat(
        (
            pos_y[:, None, :].expand(height, width, half),
            pos_x[None, :, :].expand(height, width, half),
        ),
        dim=-1,
    )
    return grid.reshape(height * width, d_model)


def coordinate_position_embedding(
    coordinates: torch.Tensor, num_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Embed each coordinate with ``num_feats`` sin/cos features (float32 in, float32 out).

    Parameters
    ----------
    coordinates
        (..., n) values; with n ≥ 2 the first two are (x, y) and their embeddings are swapped
        to (y, x, ...), as in DETR.
    num_feats
        Features per coordinate.

    Returns
    -------
    torch.Tensor
        (..., n · num_feats).
    """
    freq = _frequencies(num_feats, temperature, coordinates.device)
    parts = [
        _interleave_sin_cos(c[..., None].float() * (2 * math.pi) / freq)
        for c in coordinates.unbind(-1)
    ]
    if len(parts) >= 2:
        parts[0], parts[1] = parts[1], parts[0]
    return torch.cat(parts, dim=-1)
