"""SegGPT's ViT encoder: pre-norm blocks with global attention, stream merge and feature ensemble.

Feature ensemble (several prompts for one target) follows the ORIGINAL SegGPT inference
(Painter, ``SegGPT_inference/models_seggpt.py``), not transformers' port:

- the batch of one target holds one stacked input per prompt; after the attention of every
  block, the attention output of the *target* half (lower rows) is replaced by its mean over the
  prompts, so all prompts see one shared target;
- up to and including the merge block the image stream and the mask stream are averaged
  separately (``merge = 1 if merge_idx >= idx``), afterwards the merged stream is averaged.

transformers (``SegGptLayer`` with ``feature_ensemble=True``) switches to the merged rule one
block early: in the merge block itself it averages over image *and* mask streams together
(``ensemble_cond = 2 if merge_index > i else 1``). ``tests/test_seggpt_ensemble.py`` checks
that this module follows the original and that transformers differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SegGptAttention, linear_inplace_bias
from .config import SegGptArchitecture


class SegGptMlp(nn.Module):
    """Two-layer MLP with exact GELU (names as transformers: ``lin1``, ``lin2``)."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden_size, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear_inplace_bias(F.gelu(linear_inplace_bias(hidden, self.lin1)), self.lin2)


def average_target_rows(update: torch.Tensor, group: int, first_target_row: int) -> torch.Tensor:
    """Replace the target rows of ``update`` by their mean over each group of prompts.

    Parameters
    ----------
    update
        (G * group, rows, cols, C): consecutive runs of ``group`` batch entries belong to one
        target, one entry per prompt.
    group
        Number of prompts per target.
    first_target_row
        First row (in ``update``'s rows) that belongs to the target half.
    """
    if group <= 1:
        return update
    prompt_part = update[:, :first_target_row]
    target_part = update[:, first_target_row:]
    shape = target_part.shape
    mean = target_part.reshape(shape[0] // group, group, *shape[1:]).mean(dim=1, keepdim=True)
    target_part = mean.expand(-1, group, *shape[1:]).reshape(shape)
    return torch.cat((prompt_part, target_part), dim=1)


class SegGptLayer(nn.Module):
    """Pre-norm transformer block (names as transformers' ``SegGptLayer``)."""

    def __init__(self, arch: SegGptArchitecture) -> None:
        super().__init__()
        self.attention = SegGptAttention(
            hidden_size=arch.hidden_size,
            num_heads=arch.num_heads,
            grid_size=arch.grid_size,
            qkv_bias=arch.qkv_bias,
            use_relative_position=arch.use_relative_position,
        )
        self.mlp = SegGptMlp(arch.hidden_size, arch.mlp_dim)
        self.layernorm_before = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(
        self, hidden: torch.Tensor, *, ensemble_group: int = 1, first_query_row: int = 0
    ) -> torch.Tensor:
        """(B, rows, cols, C) -> (B, rows - first_query_row, cols, C).

        ``ensemble_group > 1`` averages the target half of the attention output over each run of
        that many batch entries (see :func:`average_target_rows`). ``first_query_row`` skips the
        output of the rows above it (their keys and values are still used).
        """
        rows = hidden.shape[1]
        query_rows = slice(first_query_row, rows) if first_query_row else None
        update = self.attention(self.layernorm_before(hidden), query_rows)
        update = average_target_rows(update, ensemble_group, rows // 2 - first_query_row)
        if first_query_row:
            hidden = hidden[:, first_query_row:]
        hidden = hidden + update
        return hidden + self.mlp(self.layernorm_after(hidden))


class SegGptEncoder(nn.Module):
    """The stack of blocks, the stream merge and the final layer norm of the decoder features."""

    def __init__(self, arch: SegGptArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleList(SegGptLayer(arch) for _ in range(arch.num_layers))
        self.layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def run_mask_stream(self, tokens: torch.Tensor, *, ensemble: bool) -> torch.Tensor:
        """Run the mask stream through the blocks up to and including the merge block.

        The mask stream sees only the prompts' masks (its target half is the mask token), so its
        state at the merge does not depend on the target and is computed once per prompt set.

        Parameters
        ----------
        tokens
            (N, rows, cols, C) mask-stream embeddings, one per prompt.
        ensemble
            Average the target half over the N prompts in each block (original rule).

        Returns
        -------
        torch.Tensor
            (N, rows, cols, C), the mask stream's output of the merge block.
        """
        group = tokens.shape[0] if ensemble else 1
        for layer in self.layers[: self.arch.merge_index + 1]:
            tokens = layer(tokens, ensemble_group=group)
        return tokens

    def forward(
        self,
        image_tokens: torch.Tensor,
        mask_state: torch.Tensor,
        *,
        ensemble_group: int = 1,
        keep_rows_from: int = 0,
    ) -> list[torch.Tensor]:
        """Run the image stream, merge it with the mask stream and return the decoder features.

        Parameters
        ----------
        image_tokens
            (T * N, rows, cols, C) image-stream embeddings: for each of T targets, one stacked
            input per prompt (prompt-major within each target).
        mask_state
            (N, rows, cols, C) output of :meth:`run_mask_stream`, repeated for every target.
        ensemble_group
            N when the prompts are to be ensembled, 1 to keep T * N independent predictions.
        keep_rows_from
            Only return feature rows from this patch row on; blocks after the last feature block
            are skipped and the last one computes only those rows.

        Returns
        -------
        list of torch.Tensor
            One (T * N, rows - keep_rows_from, cols, C) layer-normed feature per feature index.
        """
        arch = self.arch
        repeats = image_tokens.shape[0] // mask_state.shape[0]
        last = max(arch.feature_indices)
        features: list[torch.Tensor] = []
        hidden = image_tokens
        for index, layer in enumerate(self.layers[: last + 1]):
            first_query_row = keep_rows_from if index == last else 0
            hidden = layer(hidden, ensemble_group=ensemble_group, first_query_row=first_query_row)
            if index == arch.merge_index:
                merged = mask_state.repeat(repeats, 1, 1, 1) if repeats > 1 else mask_state
                if first_query_row:
                    merged = merged[:, first_query_row:]
                hidden = (hidden + merged) * 0.5
            if index in arch.feature_indices:
                rows = hidden[:, keep_rows_from:] if index != last else hidden
                features.append(self.layernorm(rows))
        return features
