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

import functools
from collections.abc import Iterator

import numpy as np
import torch

from napari_segany.sam import transforms

__all__ = [
    "bilinear_taps",
    "foreground_window",
    "input_frame_block",
    "positive_bounding_box",
    "resize_bilinear_window",
    "resized_block",
    "upscale_into",
]

BAND_ELEMENTS = 4 * 2**20
"""Float elements computed at once (16 MiB per temporary)."""

PRODUCT_SOURCE_ROWS = 16
"""Source rows of one blend product when enlarging (the product's cost per output value)."""

PRODUCT_MIN_ELEMENTS = 2**21
"""Smaller windows are blended by gathers: the products' fixed cost would not pay."""


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


@functools.lru_cache(maxsize=16)
def _source_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bilinear_taps`' two source indices of every output position, as read-only arrays
    (a window is computed on every click: searching these is faster than building them)."""
    first, second, _ = bilinear_taps(in_size, out_size)
    first, second = first.numpy(), second.numpy()
    first.flags.writeable = second.flags.writeable = False
    return first, second


def _reach(in_size: int, out_size: int, low: int, high: int) -> tuple[int, int] | None:
    """The output positions ``[start, stop)`` whose taps touch source pixels ``low..high``.

    Both taps grow with the position and differ by at most one, so a position touches the
    range exactly when its first tap is ≤ ``high`` and its second ≥ ``low``: a contiguous run.
    """
    first, second = _source_taps(in_size, out_size)
    start = int(np.searchsorted(second, low, side="left"))
    stop = int(np.searchsorted(first, high, side="right"))
    return (start, stop) if start < stop else None


def foreground_window(
    logits: torch.Tensor,
    size: tuple[int, int],
    threshold: float,
    *,
    origin: tuple[int, int] = (0, 0),
    source_shape: tuple[int, int] | None = None,
) -> tuple[int, int, int, int] | None:
    """Output window ``(row0, row1, col0, col1)`` outside which the resized map is ≤ ``threshold``.

    ``logits`` is (h, w); ``size`` the output (H, W). ``None`` when no value exceeds ``threshold``.
    ``logits`` may be a block of a larger map of ``source_shape`` whose top-left pixel is at
    ``origin`` of that map, holding every value above ``threshold``; the window is the map's.
    """
    box = positive_bounding_box(logits, threshold)
    if box is None:
        return None
    height, width = logits.shape if source_shape is None else source_shape
    row0, col0 = origin
    row_reach = _reach(height, size[0], row0 + box[0], row0 + box[1] - 1)
    col_reach = _reach(width, size[1], col0 + box[2], col0 + box[3] - 1)
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
    *,
    origin: tuple[int, int] = (0, 0),
    source_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The window ``rows × cols`` of the (h, w) map bilinearly resized to ``size`` (float32).

    ``logits`` may be a block (top-left pixel at ``origin``) of a larger map of ``source_shape``:
    it must hold every source pixel the window reads.
    """
    height, width = logits.shape if source_shape is None else source_shape
    device = logits.device
    r_first, r_second, r_weight = (t.to(device) for t in bilinear_taps(height, size[0], *rows))
    c_first, c_second, c_weight = (t.to(device) for t in bilinear_taps(width, size[1], *cols))
    low, high = int(r_first.min()), int(r_second.max()) + 1
    row0, col0 = origin
    if (
        low < row0
        or high > row0 + logits.shape[0]
        or int(c_first.min()) < col0
        or int(c_second.max()) >= col0 + logits.shape[1]
    ):
        raise ValueError(
            f"the window {rows} x {cols} reads source pixels outside the block of "
            f"{tuple(logits.shape)} at {origin}"
        )
    source = logits[low - row0 : high - row0].float()
    c_first, c_second = c_first - col0, c_second - col0
    # Columns first on the few source rows, then rows; the blends run in place.
    columns = source.index_select(1, c_first).mul_(1 - c_weight)
    columns.add_(source.index_select(1, c_second).mul_(c_weight))
    r_first, r_second = r_first - low, r_second - low
    small = len(r_first) * columns.shape[1] < PRODUCT_MIN_ELEMENTS
    if size[0] < 2 * height or small or device.type != "cpu":
        out = columns.index_select(0, r_first).mul_((1 - r_weight)[:, None])
        return out.add_(columns.index_select(0, r_second).mul_(r_weight[:, None]))
    # Enlarging: a few output rows at a time as one product of their (rows, source rows) blend
    # matrix, two weights a row, with the few source rows they read: one pass over the output
    # instead of five (a 12000² mask: 140 ms instead of 490 ms).
    out = columns.new_empty(len(r_first), columns.shape[1])
    step = max(1, (PRODUCT_SOURCE_ROWS - 2) * size[0] // height)
    for start in range(0, len(r_first), step):
        first, second = r_first[start : start + step], r_second[start : start + step]
        top, bottom = int(first[0]), int(second[-1]) + 1
        blend = columns.new_zeros(len(first), bottom - top)
        where = torch.arange(len(first), device=device)
        blend[where, first - top] = 1 - r_weight[start : start + step]
        blend[where, second - top] += r_weight[start : start + step]  # + at the clamped edge
        torch.mm(blend, columns[top:bottom], out=out[start : start + step])
    return out


def block_window(
    block: tuple[torch.Tensor, tuple[int, int], tuple[int, int]],
    size: tuple[int, int],
    threshold: float,
) -> tuple[int, int, int, int] | None:
    """Output window ``(row0, row1, col0, col1)`` of the (H, W) ``size`` map outside which a frame
    ``block`` ``(values, origin, frame shape)`` resized to ``size`` is at most ``threshold``;
    ``None`` if nowhere above. A frame of ``size`` itself is not resized: the block's extent."""
    values, origin, frame_shape = block
    if tuple(frame_shape) == tuple(size):
        return origin[0], origin[0] + values.shape[0], origin[1], origin[1] + values.shape[1]
    return foreground_window(values, size, threshold, origin=origin, source_shape=frame_shape)


def block_bands(
    block: tuple[torch.Tensor, tuple[int, int], tuple[int, int]],
    size: tuple[int, int],
    window: tuple[int, int, int, int],
    band_elements: int = BAND_ELEMENTS,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, float32 logits)`` of a frame ``block`` resized to ``size``, inside ``window``
    ``(row0, row1, col0, col1)``, about ``band_elements`` values at a time. The block must hold
    every source pixel the window reads (as from :func:`block_window`)."""
    values, origin, frame_shape = block
    row0, row1, col0, col1 = window
    band = max(1, band_elements // max(1, col1 - col0))
    for start in range(row0, row1, band):
        stop = min(row1, start + band)
        if tuple(frame_shape) == tuple(size):  # no resize: the block's own values
            rows = slice(start - origin[0], stop - origin[0])
            yield start, values[rows, col0 - origin[1] : col1 - origin[1]].float()
        else:
            yield (
                start,
                resize_bilinear_window(
                    values,
                    size,
                    (start, stop),
                    (col0, col1),
                    origin=origin,
                    source_shape=frame_shape,
                ),
            )


def upscale_into(
    logits: torch.Tensor,
    out: torch.Tensor,
    *,
    threshold: float = 0.0,
    window: tuple[int, int, int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
    source_shape: tuple[int, int] | None = None,
) -> None:
    """Resize the (h, w) map into ``out`` (H, W): bool ``> threshold``, or float logits.

    For a bool ``out`` only the :func:`foreground_window` is computed (``out`` must be all False
    outside it, e.g. from ``torch.zeros``); a float ``out`` is filled everywhere, or inside
    ``window`` when given. Work proceeds in bands of about :data:`BAND_ELEMENTS` values.
    ``origin`` and ``source_shape``: ``logits`` is a block of a larger map, as for
    :func:`foreground_window` (then it must hold every source pixel the window reads, and for a
    bool ``out`` every value above ``threshold``). A map of ``out``'s size is copied (or
    thresholded) into place, without a window.
    """
    size = (int(out.shape[0]), int(out.shape[1]))
    as_mask = out.dtype == torch.bool
    if window is None and (tuple(logits.shape) if source_shape is None else source_shape) == size:
        # No resize: the block itself, copied or thresholded into place.
        target = out[
            origin[0] : origin[0] + logits.shape[0], origin[1] : origin[1] + logits.shape[1]
        ]
        target.copy_(logits > threshold if as_mask else logits)
        return
    block = {"origin": origin, "source_shape": source_shape}
    if window is None:
        if as_mask:
            window = foreground_window(logits, size, threshold, **block)
        else:
            window = (0, size[0], 0, size[1])
    if window is None:
        return
    row0, row1, col0, col1 = window
    if as_mask and out.device.type == "cpu":
        # Writes the window's all-False pages once, in one pass: an output from ``np.zeros`` has
        # pages the OS maps on first touch, and touching them from the threshold below was
        # 5 times slower (a 12000² mask: 180 ms instead of 55 ms).
        out[row0:row1, col0:col1] = False
    band = max(1, BAND_ELEMENTS // max(1, col1 - col0))
    for start in range(row0, row1, band):
        stop = min(row1, start + band)
        values = resize_bilinear_window(logits, size, (start, stop), (col0, col1), **block)
        target = out[start:stop, col0:col1]
        if as_mask and target.device == values.device:
            torch.gt(values, threshold, out=target)
        else:  # float output, or a GPU computation written into a CPU result
            target.copy_(values > threshold if as_mask else values)


def resized_block(
    logits: torch.Tensor, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor:
    """Rows ``rows`` × columns ``cols`` of :func:`~napari_segany.sam.transforms.resize_bilinear`
    of the (h, w) float map to ``size``, with the same values, computed from only the source
    pixels they read when the factors are integers (SAM's 256 -> 1024) on the CPU; otherwise
    the whole map is resized (cheap on a GPU) and the window cut out."""
    height, width = logits.shape
    fy, fx = size[0] // height, size[1] // width
    on_cpu = logits.device.type == "cpu"
    if fy * height != size[0] or fx * width != size[1] or min(fy, fx) < 2 or not on_cpu:
        return transforms.resize_bilinear(logits[None], size)[
            0, rows[0] : rows[1], cols[0] : cols[1]
        ]
    # Output row i * f + phase blends source rows i and i - 1 or i + 1 (clamped at the edges):
    # the source block holds those rows for the requested outputs, and the outputs next to its
    # inner edges, which would clamp there, are not requested.
    top, bottom = max(0, rows[0] // fy - 1), min(height, (rows[1] - 1) // fy + 2)
    left, right = max(0, cols[0] // fx - 1), min(width, (cols[1] - 1) // fx + 2)
    part = logits[top:bottom, left:right].contiguous()
    part = transforms.resize_bilinear(part[None], (part.shape[0] * fy, part.shape[1] * fx))[0]
    return part[rows[0] - top * fy : rows[1] - top * fy, cols[0] - left * fx : cols[1] - left * fx]


def input_frame_block(
    low_res: torch.Tensor,
    frame_size: tuple[int, int],
    crop: tuple[int, int],
    threshold: float,
    *,
    margin: int = 0,
) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """SAM's input-frame logits only where they can exceed ``threshold``.

    The frame is the (L, L) float map ``low_res`` bilinearly resized to ``frame_size`` and
    cropped to ``crop`` (the resized image inside the padded model input). Returned: the block of
    the frame inside the :func:`foreground_window`, grown by ``margin`` pixels on each side (one
    is what a second resize reads around it) and clipped to ``crop``, and its top-left corner;
    ``None`` when no value of the frame exceeds ``threshold``. The values equal those of the
    whole frame; a compact object costs a fraction of it.
    """
    window = foreground_window(low_res, frame_size, threshold)
    if window is None:
        return None
    row0, row1 = max(0, window[0] - margin), min(crop[0], window[1] + margin)
    col0, col1 = max(0, window[2] - margin), min(crop[1], window[3] + margin)
    if row0 >= row1 or col0 >= col1:  # positive only in the padding
        return None
    return resized_block(low_res, frame_size, (row0, row1), (col0, col1)), (row0, col0)
