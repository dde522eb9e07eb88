"""Small layers shared by the SAM encoder and decoder: channels-first LayerNorm and MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fused_linear import linear_then_bias, residual_plus_linear


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor.

    Parameter names (``weight``, ``bias``) follow the original segment_anything ``LayerNorm2d``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), normalised over C."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FeedForward(nn.Module):
    """Transformer MLP: ``lin2(act(lin1(x)))`` on the last axis."""

    def __init__(self, embed_dim: int, mlp_dim: int, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embed_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embed_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor, *, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(..., embed_dim) -> (..., embed_dim); plus ``residual`` when given (accumulated by the
        second product, a new tensor)."""
        inner = self.act(linear_then_bias(x, self.lin1))
        if residual is not None:
            return residual_plus_linear(residual, inner, self.lin2)
        return linear_then_bias(inner, self.lin2)


class MultiLayerPerceptron(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the decoder's hypernetwork and IoU heads).

    Parameter names (``layers.0``, ``layers.1``, ...) follow the original segment_anything ``MLP``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x
