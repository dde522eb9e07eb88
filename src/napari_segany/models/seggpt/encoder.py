"""SegGPT's ViT encoder: pre-norm blocks with global attention, stream merge and feature ensemble.

Feature ensemble (several prompts for one target) follows the ORIGINAL SegGPT inference
(Painter, ``SegGPT_inference/models_seggpt.py``), not transformers' port:

- the batch of one target holds one stacked input per prompt; after the attention of every
  block, the attention output of the *target* half (lower rows) is replaced by its mean over the
  prompts, so all prompts see one shared target (which is therefore stored once here, see
  :class:`SplitTokens`);
- up to and including the merge block the image stream and the mask stream are averaged
  separately (``merge = 1 if merge_idx >= idx``), afterwards the merged stream is averaged.

transformers (``SegGptLayer`` with ``feature_ensemble=True``) switches to the merged rule one
block early: in the merge block itself it averages over image *and* mask streams together
(``ensemble_cond = 2 if merge_index > i else 1``). ``tests/test_seggpt_ensemble.py`` checks
that this module follows the original and that transformers differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..fused_linear import linear_then_bias, residual_plus_linear
from .attention import SegGptAttention
from .config import SegGptArchitecture


class SegGptMlp(nn.Module):
    """Two-layer MLP with exact GELU (names as transformers: ``lin1``, ``lin2``)."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden_size, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, hidden_size)

    def forward(
        self, hidden: torch.Tensor, *, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(..., C) -> (..., C); plus ``residual`` when given (accumulated by the second product)."""
        inner = F.gelu(linear_then_bias(hidden, self.lin1))
        if residual is not None:
            return residual_plus_linear(residual, inner, self.lin2)
        return linear_then_bias(inner, self.lin2)


class SplitTokens(NamedTuple):
    """Tokens of stacked inputs kept as their two halves, the target half once per group.

    With feature ensemble, every prompt of one target sees the same (averaged) target half, so
    the target half is stored, normed, projected and passed through the MLP once per target
    instead of once per prompt; only the attention itself runs per prompt.

    Attributes
    ----------
    prompt
        (G * g, prompt_rows, cols, C): the upper (prompt) rows of every stacked input; runs of
        ``g`` consecutive entries share one target (one entry per prompt).
    target
        (G, rows / 2, cols, C): the lower (target) rows, one per group.
    """

    prompt: torch.Tensor
    target: torch.Tensor

    @property
    def group(self) -> int:
        """Stacked inputs (prompts) per target half."""
        return self.prompt.shape[0] // self.target.shape[0]


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

    def forward(self, tokens: SplitTokens, *, first_query_row: int = 0) -> SplitTokens:
        """Run the block on stacked inputs held as :class:`SplitTokens`.

        Every stacked input attends over its own prompt rows and its group's target rows. The
        attention output of the target rows is averaged over the group (the feature ensemble;
        a no-op for groups of one) before it is added to the shared target half.

        Parameters
        ----------
        tokens
            The block input; its prompt part has all ``rows / 2`` prompt rows.
        first_query_row
            Only compute outputs from this stacked row on (at most ``rows / 2``); the returned
            prompt part then has ``rows / 2 - first_query_row`` rows.
        """
        prompt, target = tokens
        group = tokens.group
        half = target.shape[1]
        if group == 1:  # nothing shared: one block over whole stacked inputs (larger products)
            hidden = self._forward_whole(torch.cat((prompt, target), dim=1), first_query_row)
            prompt_rows = half - first_query_row
            return SplitTokens(hidden[:, :prompt_rows], hidden[:, prompt_rows:])
        attention = self.attention
        qkv_target = attention.project_qkv(self.layernorm_before(target))
        if group > 1:
            qkv_target = qkv_target.repeat_interleave(group, dim=0)
        qkv = torch.cat((attention.project_qkv(self.layernorm_before(prompt)), qkv_target), dim=1)
        query_rows = slice(first_query_row, 2 * half) if first_query_row else None
        update = attention.attend(qkv, query_rows)
        prompt_rows = half - first_query_row
        update_prompt, update_target = update[:, :prompt_rows], update[:, prompt_rows:]
        if group > 1:
            update_target = update_target.reshape(-1, group, *update_target.shape[1:]).mean(dim=1)
        prompt = residual_plus_linear(prompt[:, first_query_row:], update_prompt, attention.proj)
        target = residual_plus_linear(target, update_target, attention.proj)
        prompt = self.mlp(self.layernorm_after(prompt), residual=prompt)
        target = self.mlp(self.layernorm_after(target), residual=target)
        return SplitTokens(prompt, target)

    def _forward_whole(self, hidden: torch.Tensor, first_query_row: int) -> torch.Tensor:
        """(B, rows, cols, C) -> (B, rows - first_query_row, cols, C), no ensemble."""
        rows = hidden.shape[1]
        query_rows = slice(first_query_row, rows) if first_query_row else None
        attention = self.attention
        update = attention.attend(attention.project_qkv(self.layernorm_before(hidden)), query_rows)
        hidden = residual_plus_linear(hidden[:, first_query_row:], update, attention.proj)
        return self.mlp(self.layernorm_after(hidden), residual=hidden)


class SegGptEncoder(nn.Module):
    """The stack of blocks, the stream merge and the final layer norm of the decoder features."""

    def __init__(self, arch: SegGptArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleList(SegGptLayer(arch) for _ in range(arch.num_layers))
        self.layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def run_mask_stream(
        self,
        tokens: torch.Tensor,
        *,
        ensemble: bool,
        on_block: Callable[[int, int], None] | None = None,
    ) -> SplitTokens:
        """Run the mask stream through the blocks up to and including the merge block.

        The mask stream sees only the prompts' masks (its target half is the mask token), so its
        state at the merge does not depend on the target and is computed once per prompt set.

        Parameters
        ----------
        tokens
            (N, rows, cols, C) mask-stream embeddings, one per prompt (their lower halves are
            identical: mask token plus positions).
        ensemble
            Average the target half over the N prompts in each block (original rule); its
            target part is then a single (1, rows / 2, cols, C) half.
        on_block
            Called as ``on_block(done, total)`` after each block (``total = merge_index + 1``);
            an exception raised from it aborts the run and propagates (cancellation).

        Returns
        -------
        SplitTokens
            The mask stream's output of the merge block.
        """
        half = tokens.shape[1] // 2
        target = tokens[:1, half:] if ensemble else tokens[:, half:]
        split = SplitTokens(tokens[:, :half], target)
        layers = self.layers[: self.arch.merge_index + 1]
        for done, layer in enumerate(layers, start=1):
            split = layer(split)
            if on_block is not None:
                on_block(done, len(layers))
        return split

    def forward(
        self,
        image: SplitTokens,
        mask_state: SplitTokens,
        *,
        keep_rows_from: int = 0,
        on_block: Callable[[int, int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Run the image stream, merge it with the mask stream and return the decoder features.

        Parameters
        ----------
        image
            Image-stream embeddings: for each of G target halves, ``g`` stacked inputs (one per
            prompt, prompt-major within each target; ``g = 1`` without ensemble).
        mask_state
            Output of :meth:`run_mask_stream` for the N prompts, repeated for every target.
        keep_rows_from
            Only return feature rows from this stacked row on (at most ``rows / 2``); blocks
            after the last feature block are skipped and the last one computes only those rows.
        on_block
            Called as ``on_block(done, total)`` after each block that runs (``total`` is the
            last feature index + 1); an exception raised from it aborts the forward and
            propagates (cancellation within one block).

        Returns
        -------
        list of torch.Tensor
            One (G, rows - keep_rows_from, cols, C) layer-normed feature per feature index:
            the first stacked input of each group (its last prompt rows) over its target half.
        """
        arch = self.arch
        last = max(arch.feature_indices)
        half = image.target.shape[1]
        features: list[torch.Tensor] = []
        tokens = image
        for index, layer in enumerate(self.layers[: last + 1]):
            tokens = layer(tokens, first_query_row=keep_rows_from if index == last else 0)
            if on_block is not None:
                on_block(index + 1, last + 1)
            if index == arch.merge_index:
                tokens = _merge_streams(tokens, mask_state)
            if index in arch.feature_indices:
                prompt_rows = tokens.prompt[
                    :: tokens.group, tokens.prompt.shape[1] - (half - keep_rows_from) :
                ]
                features.append(self.layernorm(torch.cat((prompt_rows, tokens.target), dim=1)))
        return features


def _merge_streams(image: SplitTokens, mask: SplitTokens) -> SplitTokens:
    """Average the image stream with the mask stream (repeated over the targets)."""
    mask_prompt = mask.prompt[:, mask.prompt.shape[1] - image.prompt.shape[1] :]
    prompt_repeats = image.prompt.shape[0] // mask_prompt.shape[0]
    target_repeats = image.target.shape[0] // mask.target.shape[0]
    prompt = (image.prompt + mask_prompt.repeat(prompt_repeats, 1, 1, 1)) * 0.5
    target = (image.target + mask.target.repeat(target_repeats, 1, 1, 1)) * 0.5
    return SplitTokens(prompt, target)
