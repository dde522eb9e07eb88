"""Low-rank adapters (LoRA) on the query and value projections of one SAM encoder block.

The "deeper" fine-tuning mode trains the mask decoder plus rank-r updates of the last encoder
block's q and v projections: ``W_q + s * U_q D_q`` and ``W_v + s * U_v D_v`` (``D``: r x C,
``U``: C x r, zero-initialised so training starts from the base model, ``s = alpha / r``). The
adapters are merged into the block's ``qkv`` weight for inference and export, so a fine-tuned
model has exactly the original parameter names.

Training a global-attention block on the CPU needs gradients through attention over 4096 tokens;
the package's fast CPU attention writes into preallocated outputs (no autograd), so the training
copy of the block computes global attention one head at a time under activation checkpointing
(about 3 x 64 MB live per head for ViT-B instead of 12 full attention matrices).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from napari_segany.models.relative_position import decomposed_rel_pos_terms
from napari_segany.models.sam.rel_pos_attention import RelPosAttention

__all__ = [
    "LORA_KEYS",
    "LoraQkv",
    "add_lora",
    "lora_state_dict",
    "merged_block",
]

LORA_KEYS = ("q_down", "q_up", "v_down", "v_up")
# From this many tokens on (global attention), the training copy attends head by head.
HEADWISE_MIN_TOKENS = 1024


class LoraQkv(nn.Module):
    """A frozen fused ``qkv`` projection plus trainable rank-``rank`` updates of q and v.

    Parameters
    ----------
    base
        The block's ``nn.Linear(C, 3C)`` (kept frozen, used as is).
    rank, alpha
        Adapter rank and scale numerator (``scale = alpha / rank``).
    generator
        Seeds the initialisation of the down projections.
    """

    def __init__(
        self, base: nn.Linear, *, rank: int = 4, alpha: float = 4.0, generator=None
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        dim = base.in_features
        out = base.out_features // 3
        dtype, device = base.weight.dtype, base.weight.device
        init = dim**-0.5
        self.q_down = nn.Parameter(
            (torch.randn(rank, dim, generator=generator) * init).to(dtype=dtype, device=device)
        )
        self.v_down = nn.Parameter(
            (torch.randn(rank, dim, generator=generator) * init).to(dtype=dtype, device=device)
        )
        self.q_up = nn.Parameter(torch.zeros(out, rank, dtype=dtype, device=device))
        self.v_up = nn.Parameter(torch.zeros(out, rank, dtype=dtype, device=device))
        self.scale = alpha / rank

    @property
    def bias(self) -> torch.Tensor | None:
        """The base projection's bias (read by the attention's window padding)."""
        return self.base.bias

    @property
    def weight(self) -> torch.Tensor:
        """The merged (3C, C) weight."""
        return self.base.weight + self.delta_weight()

    def delta_weight(self) -> torch.Tensor:
        """(3C, C): the adapters' update of the fused weight (zero rows for k)."""
        dq = self.q_up @ self.q_down
        dv = self.v_up @ self.v_down
        return self.scale * torch.cat([dq, torch.zeros_like(dq), dv], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., 3C)."""
        dq = (x @ self.q_down.t()) @ self.q_up.t()
        dv = (x @ self.v_down.t()) @ self.v_up.t()
        return self.base(x) + self.scale * torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class TrainableRelPosAttention(RelPosAttention):
    """:class:`RelPosAttention` whose global attention on the CPU supports autograd (see module)."""

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        if not (
            torch.is_grad_enabled()
            and self.use_rel_pos
            and q.device.type == "cpu"
            and q.shape[1] >= HEADWISE_MIN_TOKENS
        ):
            return super()._attend(q, k, v, grid)
        rel_h, rel_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, grid, grid)
        heads = [
            checkpoint(
                _one_head_attention,
                q[i],
                k[i],
                v[i],
                rel_h[i],
                rel_w[i],
                grid,
                use_reentrant=False,
            )
            for i in range(q.shape[0])
        ]
        return torch.stack(heads)


def _one_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """(N, d) q, k, v, (N, H) / (N, W) bias factors -> (N, d), differentiable."""
    height, width = grid
    logits = (q * q.shape[-1] ** -0.5) @ k.t()
    logits = logits.view(-1, height, width) + rel_h[:, :, None] + rel_w[:, None, :]
    return torch.softmax(logits.view(q.shape[0], -1), dim=-1) @ v


def add_lora(block: nn.Module, *, rank: int = 4, alpha: float = 4.0, seed: int = 0) -> nn.Module:
    """A float32 training copy of an encoder block with adapters on q and v.

    The copy's original weights are frozen; only ``attn.qkv.{q,v}_{down,up}`` require gradients.
    The block passed in is not changed.
    """
    trainable = copy.deepcopy(block).float().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    attn = trainable.attn
    attn.qkv = LoraQkv(attn.qkv, rank=rank, alpha=alpha, generator=generator)
    attn.__class__ = TrainableRelPosAttention  # same state, differentiable global attention
    return trainable


def lora_state_dict(block: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of a block from :func:`add_lora`: ``{"q_down": (r, C), "q_up": (C, r), ...}``."""
    qkv = block.attn.qkv
    return {name: getattr(qkv, name).detach().float().clone() for name in LORA_KEYS}


def merged_block(
    block: nn.Module,
    adapters: dict[str, torch.Tensor],
    *,
    alpha: float = 4.0,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A copy of a plain encoder block with the adapters merged into its ``qkv`` weight.

    Parameters
    ----------
    block
        An encoder block of the base model (not changed).
    adapters
        ``{"q_down", "q_up", "v_down", "v_up"}`` tensors, as from :func:`lora_state_dict`.
    alpha
        The scale numerator the adapters were trained with (rank is read from their shapes).
    dtype
        dtype of the returned block (default: the block's).
    """
    out = copy.deepcopy(block)
    weight = out.attn.qkv.weight
    rank = adapters["q_down"].shape[0]
    scale = alpha / rank
    with torch.no_grad():
        dq = adapters["q_up"].double() @ adapters["q_down"].double()
        dv = adapters["v_up"].double() @ adapters["v_down"].double()
        delta = scale * torch.cat([dq, torch.zeros_like(dq), dv], dim=0)
        merged = weight.double() + delta.to(weight.device)
        out.attn.qkv.weight.copy_(merged.to(weight.dtype))
    if dtype is not None:
        out = out.to(dtype)
    return out.eval().requires_grad_(False)
