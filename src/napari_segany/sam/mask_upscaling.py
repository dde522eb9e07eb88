"""Upscaling SAM mask logits to a large image one mask at a time, only where it can be foreground.

SAM's decoder gives low-resolution logits; the original predictor resizes every candidate of
every object to the full image with one bilinear ``F.interpolate``, which on a 12000² slide holds
B × 3 full-size float maps (+16.5 GB for 8 boxes). Here each mask is resized on its own, only
inside the window its positive logits can reach (bilinear interpolation is a convex blend of two
rows and two columns, so an output pixel whose four source pixels are all at or below the
threshold is below it too), and that window is computed a band of rows at a time. Memory is then
the boolean output plus a few tens of MB.

The sampling positions and weights are PyTorch's (``align_corners=False``, source index clamped
at 0, last row/column repeated), so the values equal ``F.interpolate``'s to float rounding
(about 1e-7 relative).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "bilinear_taps",
    "foreground_window",
    "positive_bounding_box",
    "resize_bilinear_window",
    "upscale_into",
]

BAND_ELEMENTS = 4 * 2**20
"""Float elements computed at once (16 MiB per temporary)."""


def bilinear_taps(
    in_size: int, out_size: int, start: int = 0, stop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of output positions ``start..stop`` of a bilinear resize.

    Returns
    -------
    first, second
        (n,) int64 indices of the two source pixels.
    weight
        (n,) float32 weight of ``second`` (``first`` has ``1 - weight``).
    """
    stop = out_size if stop is None else stop
    scale = float(np.float32(in_size) / np.float32(out_size))  # PyTorch's float ratio
    position = torch.arange(start, stop, dtype=torch.float64)
    source = ((position + 0.5) * scale - 0.5).to(torch.float32).clamp_(min=0)
    first = source.floor().to(torch.int64).clamp_(max=in_size - 1)
    weight = (source - first).clamp_(0, 1)
    second = torch.where(first < in_size - 1, first + 1, first)
    return first, second, weight


def _reach(
    first: torch.Tensor, second: torch.Tensor, low: int, high: int
) -> tuple[int, int] | None:
    touched = ((first >= low) & (first <= high)) | ((second >= low) & (second <= high))
    where = torch.nonzero(touched).flatten()
    if where.numel() == 0:
        return None
    return int(where[0]), int(where[-1]) + 1


def foreground_window(
    logits: torch.Tensor, size: tuple[int, int], threshold: float
) -> tuple[int, int, int, int] | None:
    """Output window ``(row0, row1, col0, col1)`` outside which the resized map is ≤ ``threshold``.

    ``logits`` is (h, w); ``size`` the output (H, W). ``None`` when no value exceeds ``threshold``.
    """
    box = positive_bounding_box(logits, threshold)
    if box is None:
        return None
    height, width = logits.shape
    row_reach = _reach(*bilinear_taps(height, size[0])[:2], box[0], box[1] - 1)
    col_reach = _reach(*bilinear_taps(width, size[1])[:2], box[2], box[3] - 1)
    if row_reach is None or col_reach is None:
        return None
    return (*row_reach, *col_reach)


def positive_bounding_box(
    logits: torch.Tensor, threshold: float
) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)``: the smallest window holding every value of the (h, w) map
    above ``threshold``; ``None`` if there is none. From row and column maxima (float
    reductions, several times faster than boolean ones)."""
    rows = torch.nonzero(logits.amax(dim=1) > threshold).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(logits.amax(dim=0) > threshold).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize_bilinear_window(
    logits: torch.Tensor,
    size: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> torch.Tensor:
    """The window ``rows × cols`` of the (h, w) map bilinearly resized to ``size`` (float32)."""
    height, width = logits.shape
    device = logits.device
    r_first, r_second, r_weight = (t.to(device) for t in bilinear_taps(height, size[0], *rows))
    c_first, c_second, c_weight = (t.to(device) for t in bilinear_taps(width, size[1], *cols))
    low, high = int(r_first.min()), int(r_second.max()) + 1
    source = logits[low:high].float()
    # Columns first on the few source rows, then rows; the blends run in place.
    columns = source.index_select(1, c_first).mul_(1 - c_weight)
    columns.add_(source.index_select(1, c_second).mul_(c_weight))
    out = columns.index_select(0, r_first - low).mul_((1 - r_weight)[:, None])
    return out.add_(columns.index_select(0, r_second - low).mul_(r_weight[:, None]))


def upscale_into(
    logits: torch.Tensor,
    out: torch.Tensor,
    *,
    threshold: float = 0.0,
    window: tuple[int, int, int, int] | None = None,
) -> None:
    """Resize the (h, w) map into ``out`` (H, W): bool ``> threshold``, or float logits.

    For a bool ``out`` only the :func:`foreground_window` is computed (``out`` must be all False
    outside it, e.g. from ``torch.zeros``); a float ``out`` is filled everywhere, or inside
    ``window`` when given. Work proceeds in bands of about :data:`BAND_ELEMENTS` values.
    """
    size = (int(out.shape[0]), int(out.shape[1]))
    as_mask = out.dtype == torch.bool
    if window is None:
        window = foreground_window(logits, size, threshold) if as_mask else (0, size[0], 0, size[1])
    if window is None:
        return
    row0, row1, col0, col1 = window
    band = max(1, BAND_ELEMENTS // max(1, col1 - col0))
    for start in range(row0, row1, band):
        stop = min(row1, start + band)
        values = resize_bilinear_window(logits, size, (start, stop), (col0, col1))
        target = out[start:stop, col0:col1]
        if as_mask and target.device == values.device:
            torch.gt(values, threshold, out=target)
        else:  # float output, or a GPU computation written into a CPU result
            target.copy_(values > threshold if as_mask else values)
