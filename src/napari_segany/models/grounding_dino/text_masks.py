"""Phrase-separated text attention: each "."-delimited phrase attends only to itself."""

from __future__ import annotations

import torch


def phrase_attention_masks(
    input_ids: torch.Tensor, delimiter_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal text attention and per-phrase position ids.

    A phrase is the run of tokens up to and including the next delimiter ([CLS], [SEP], "." or
    "?"). Tokens of a phrase attend to each other and get positions 0, 1, ... counted from the
    previous delimiter. Delimiters that close nothing ([CLS], the final [SEP] or tokens after the
    last delimiter) attend only to themselves and get position 0.

    Parameters
    ----------
    input_ids
        (B, T) token ids.
    delimiter_ids
        (D,) ids of the delimiter tokens.

    Returns
    -------
    attend
        (B, T, T) bool, True where token i may attend to token j.
    position_ids
        (B, T) int64.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    is_delimiter = torch.isin(input_ids, delimiter_ids.to(device))
    index = torch.arange(length, device=device).expand(batch, -1)
    # The delimiter closing each token's phrase: the first delimiter at or after it.
    closing = torch.where(is_delimiter, index, torch.full_like(index, length))
    closing = closing.flip(1).cummin(1)[0].flip(1)
    # The delimiter before each token (-1 at the start).
    before = torch.where(is_delimiter, index, torch.full_like(index, -1)).cummax(1)[0]
    before = torch.cat([before.new_full((batch, 1), -1), before[:, :-1]], 1)
    in_phrase = (closing != 0) & (closing != length - 1) & (closing != length)
    attend = (closing[:, :, None] == closing[:, None, :]) & in_phrase[:, None, :]
    attend = attend | torch.eye(length, dtype=torch.bool, device=device)[None]
    position_ids = torch.where(in_phrase, index - before - 1, torch.zeros_like(index))
    return attend, position_ids.clamp(min=0)
