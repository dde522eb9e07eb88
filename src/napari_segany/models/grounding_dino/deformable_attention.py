"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query looks at ``n_points`` learned sampling locations around its reference point on every
feature level and mixes the bilinearly sampled values with learned weights. No custom kernel:
``grid_sample`` on GPUs and MPS; on the CPU the same bilinear sampling written as one
``embedding_bag`` (the four corner rows of every sample, weighted by bilinear × attention weight,
summed per query and head), which never builds the per-point sampled values and is about twice
as fast there. Both give ``grid_sample``'s ``align_corners=False``, zero-padding result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample and mix values at fractional locations of several feature maps.

    Parameters
    ----------
    value
        (B, S, heads, head_dim), the flattened levels concatenated (S = Σ h_l·w_l).
    spatial_shapes
        (h_l, w_l) of each level, in the order of ``value``.
    sampling_locations
        (B, Q, heads, levels, points, 2) in [0, 1], (x, y) relative to each level.
    attention_weights
        (B, Q, heads, levels, points), summing to 1 over levels × points.

    Returns
    -------
    torch.Tensor
        (B, Q, heads · head_dim), float32 for float32 inputs.
    """
    if value.device.type == "cpu":
        return deformable_attention_embedding_bag(
            value, spatial_shapes, sampling_locations, attention_weights
        )
    return deformable_attention_grid_sample(
        value, spatial_shapes, sampling_locations, attention_weights
    )


def deformable_attention_embedding_bag(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` as one weighted ``embedding_bag`` (CPU path)."""
    batch, total, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    device = value.device
    sizes = torch.tensor(spatial_shapes, dtype=torch.long, device=device)  # (levels, 2) h, w
    areas = sizes[:, 0] * sizes[:, 1]
    starts = (torch.cumsum(areas, 0) - areas).view(1, 1, 1, levels, 1)
    height = sizes[:, 0].view(1, 1, 1, levels, 1)
    width = sizes[:, 1].view(1, 1, 1, levels, 1)
    # Pixel coordinates with align_corners=False: location 0 is the left edge of pixel 0.
    x = sampling_locations[..., 0].float() * width - 0.5
    y = sampling_locations[..., 1].float() * height - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    # First row of each (batch, head) block in the value table.
    block = torch.arange(batch, device=device).view(batch, 1, 1, 1, 1) * heads
    block = (block + torch.arange(heads, device=device).view(1, 1, heads, 1, 1)) * total
    weight = attention_weights.float()
    indices, weights = [], []
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        bilinear = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        indices.append(torch.where(inside, block + starts + yi * width + xi, block))
        weights.append(bilinear * weight * inside)
    samples = levels * points * 4
    indices = torch.stack(indices, -1).view(batch * queries * heads, samples)
    weights = torch.stack(weights, -1).view(batch * queries * heads, samples)
    table = value.float().permute(0, 2, 1, 3).reshape(batch * heads * total, head_dim)
    out = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    return out.view(batch, queries, heads * head_dim)


def deformable_attention_grid_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` with ``grid_sample``, one call per level."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    # (B·heads, 1, Q, levels, points): each level's sampled values are weighted and summed
    # right away, so the (B·heads, head_dim, Q, levels·points) stack is never built.
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    out = None
    for level, (height, width) in enumerate(spatial_shapes):
        v = (
            per_level[level]
            .flatten(2)
            .transpose(1, 2)
            .reshape(batch * heads, head_dim, height, width)
        )
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B·heads, Q, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (sampled * weights[..., level, :].to(sampled.dtype)).sum(-1)  # (B·heads, D, Q)
        out = term if out is None else out.add_(term)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2)


class MultiscaleDeformableAttention(nn.Module):
    """Deformable attention module: offsets, weights and value/output projections.

    Parameters
    ----------
    d_model
        Feature width.
    num_heads, n_levels, n_points
        Heads, feature levels and sampling points per level and head.
    """

    def __init__(self, d_model: int, num_heads: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {num_heads} heads")
        self.d_model = d_model
        self.n_heads = num_heads
        self.n_levels = n_levels
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        queries: torch.Tensor,
        values: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from ``queries`` (B, Q, C) to the flattened multi-scale ``values`` (B, S, C).

        ``reference_points`` is (B, Q, levels, 2) points (x, y) or (B, Q, levels, 4) boxes
        (cx, cy, w, h), normalized to [0, 1]. Returns (B, Q, C).
        """
        batch, num_queries, _ = queries.shape
        # Sampling locations and the sampling itself stay in float32: in bfloat16 a location on
        # a 200-pixel-wide level would be off by up to half a pixel.
        value = self.value_proj(values).float().view(batch, values.shape[1], self.n_heads, -1)
        reference_points = reference_points.float()
        offsets = (
            self.sampling_offsets(queries)
            .float()
            .view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        )
        weights = self.attention_weights(queries).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = (
            weights.float()
            .softmax(-1)
            .view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        )
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
            )
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference points must end in 2 or 4, got {reference_points.shape}")
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out.to(queries.dtype))
