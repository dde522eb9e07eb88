"""Prompts simulated from a ground-truth mask: boxes, interior points, negatives, correction clicks.

Pure numpy. Coordinates are (x, y) pixels of the frame of the mask given (SAM's order, STYLE
rule 6); masks are (H, W) boolean arrays, rows first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ObjectPrompts", "correction_click", "jitter_box", "object_prompts"]

MAX_CANDIDATES = 256


@dataclass(frozen=True)
class ObjectPrompts:
    """Prompt material of one object, in (x, y) pixels of its tile.

    Attributes
    ----------
    box
        (4,) float x0, y0, x1, y1: the tight box (inclusive corners).
    centre
        (2,) float: the interior point farthest from the object's edge.
    interior
        (K, 2) float: interior points at least ``min_edge_distance`` from the edge (the most
        interior half of the object when it is thinner than that).
    negatives
        (J, 2) float: points inside the object's dilated box but outside the (slightly grown)
        object, so an unlabelled neighbour far away is never taught as background. May be empty.
    dilated_box
        (4,) int x0, y0, x1, y1 (exclusive end): the box grown by ``box_margin`` per side, clipped.
    """

    box: np.ndarray
    centre: np.ndarray
    interior: np.ndarray
    negatives: np.ndarray
    dilated_box: np.ndarray


def object_prompts(
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    min_edge_distance: float = 10.0,
    box_margin: float = 0.2,
) -> ObjectPrompts:
    """Precompute the prompt material of one object.

    Parameters
    ----------
    mask
        (H, W) bool, the object; must not be empty.
    rng
        Random generator choosing at most 256 candidate points of each kind.
    min_edge_distance
        Interior points lie at least this many pixels from the object's edge when possible.
    box_margin
        The dilated box grows the tight box by this fraction of its side (plus 4 px) per side.
    """
    from scipy import ndimage

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("empty object mask")
    height, width = mask.shape
    y0, y1, x0, x1 = rows.min(), rows.max(), cols.min(), cols.max()
    pad_y = int(box_margin * (y1 - y0 + 1)) + 4
    pad_x = int(box_margin * (x1 - x0 + 1)) + 4
    dy0, dy1 = max(y0 - pad_y, 0), min(y1 + pad_y + 1, height)
    dx0, dx1 = max(x0 - pad_x, 0), min(x1 + pad_x + 1, width)
    window = mask[dy0:dy1, dx0:dx1]
    # Distance to the edge, with the window border counted as outside the object.
    distance = ndimage.distance_transform_edt(np.pad(window, 1))[1:-1, 1:-1]
    best = np.unravel_index(int(np.argmax(distance)), distance.shape)
    centre = np.array([best[1] + dx0, best[0] + dy0], dtype=np.float64)
    threshold = min(float(min_edge_distance), 0.5 * float(distance.max()))
    inner = np.argwhere(distance >= max(threshold, 1.0))
    grown = ndimage.binary_dilation(window, iterations=2)
    outside = np.argwhere(~grown)
    return ObjectPrompts(
        box=np.array([x0, y0, x1, y1], dtype=np.float64),
        centre=centre,
        interior=_subsample_xy(inner, (dy0, dx0), rng),
        negatives=_subsample_xy(outside, (dy0, dx0), rng),
        dilated_box=np.array([dx0, dy0, dx1, dy1], dtype=np.int64),
    )


def _subsample_xy(
    row_col: np.ndarray, offset: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    if len(row_col) > MAX_CANDIDATES:
        row_col = row_col[rng.choice(len(row_col), MAX_CANDIDATES, replace=False)]
    xy = np.empty((len(row_col), 2), dtype=np.float64)
    xy[:, 0] = row_col[:, 1] + offset[1]
    xy[:, 1] = row_col[:, 0] + offset[0]
    return xy


def jitter_box(
    box: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    *,
    fraction: float = 0.1,
    max_pixels: float = 20.0,
) -> np.ndarray:
    """Move each side of an x0, y0, x1, y1 box by N(0, fraction * side) pixels, at most ``max_pixels``.

    ``size`` is the (height, width) of the frame; the box stays inside it and keeps x0 < x1, y0 < y1.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    sides = np.array([x1 - x0 + 1, y1 - y0 + 1, x1 - x0 + 1, y1 - y0 + 1])
    noise = np.clip(rng.normal(0.0, fraction * sides), -max_pixels, max_pixels)
    out = np.array([x0, y0, x1, y1]) + noise
    height, width = size
    out[[0, 2]] = np.clip(out[[0, 2]], 0, width - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, height - 1)
    if out[2] <= out[0]:
        out[0], out[2] = x0, x1
    if out[3] <= out[1]:
        out[1], out[3] = y0, y1
    return out


def correction_click(
    prediction: np.ndarray, target: np.ndarray, region: np.ndarray | None = None
) -> tuple[np.ndarray, int] | None:
    """Where a user would click next to correct ``prediction``: the centre of the largest error.

    Parameters
    ----------
    prediction, target
        (H, W) bool masks.
    region
        (H, W) bool: false positives count only inside it (sparse labels); None counts all.

    Returns
    -------
    (point, label) or None
        ``point`` is (2,) float (x, y); ``label`` 1 for a missed part (add), 0 for an extra part
        (remove). None when the prediction is exact.
    """
    from scipy import ndimage

    missed = target & ~prediction
    extra = prediction & ~target
    if region is not None:
        extra &= region
    n_missed, n_extra = int(missed.sum()), int(extra.sum())
    if n_missed == 0 and n_extra == 0:
        return None
    errors, label = (missed, 1) if n_missed >= n_extra else (extra, 0)
    distance = ndimage.distance_transform_edt(np.pad(errors, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([col, row], dtype=np.float64), label
