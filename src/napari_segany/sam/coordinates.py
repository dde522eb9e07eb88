"""napari (row, col) ↔ SAM (x, y): the one place where the axis order and pixel origin change.

napari (and numpy) index an image as ``(row, col)`` and put the *centre* of pixel ``(i, j)`` at
the coordinate ``(i, j)``; the pixel spans ``[i - 0.5, i + 0.5]``. SAM takes points and boxes as
``(x, y)`` and rescales them with ``coords * (new_size / old_size)``, which maps ``0`` to ``0`` and
the image width to the resized width: its coordinates put pixel *edges* at integers, so the
centre of column ``j`` is ``x = j + 0.5``. The conversion therefore swaps the two axes and adds
half a pixel (and the inverse subtracts it). A box drawn around whole pixels ``r0..r1`` (edges
``r0 - 0.5`` and ``r1 + 0.5`` in napari) becomes ``y0 = r0``, ``y1 = r1 + 1`` in SAM: exactly the
pixel edges.

Every napari ↔ SAM conversion in this package goes through :func:`rowcol_to_xy` and
:func:`xy_to_rowcol` (STYLE rule 6).
"""

from __future__ import annotations

import numpy as np

PIXEL_CENTRE_OFFSET = 0.5
"""SAM coordinate of the centre of pixel 0 (napari puts it at 0)."""


def rowcol_to_xy(points_rc: np.ndarray) -> np.ndarray:
    """Convert napari ``(row, col)`` positions to SAM ``(x, y)`` positions.

    Parameters
    ----------
    points_rc
        (..., 2) positions in the 2D image's data coordinates, last axis ``(row, col)``, pixel
        centres at integers (napari's convention).

    Returns
    -------
    np.ndarray
        (..., 2) float64, last axis ``(x, y)`` with pixel edges at integers (SAM's convention):
        ``x = col + 0.5``, ``y = row + 0.5``.
    """
    points_rc = np.asarray(points_rc, dtype=np.float64)
    if points_rc.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) (row, col) positions, got shape {points_rc.shape}")
    return points_rc[..., ::-1] + PIXEL_CENTRE_OFFSET


def xy_to_rowcol(points_xy: np.ndarray) -> np.ndarray:
    """Convert SAM ``(x, y)`` positions back to napari ``(row, col)``; inverse of :func:`rowcol_to_xy`.

    Parameters
    ----------
    points_xy
        (..., 2) positions, last axis ``(x, y)``, pixel edges at integers.

    Returns
    -------
    np.ndarray
        (..., 2) float64, last axis ``(row, col)``, pixel centres at integers.
    """
    points_xy = np.asarray(points_xy, dtype=np.float64)
    if points_xy.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) (x, y) positions, got shape {points_xy.shape}")
    return points_xy[..., ::-1] - PIXEL_CENTRE_OFFSET


def corners_to_sam_box(corners_rc: np.ndarray) -> np.ndarray:
    """The SAM box ``(x0, y0, x1, y1)`` around napari shape vertices.

    The vertices of a napari rectangle lie on pixel edges as the user drew them (continuous
    coordinates), so the box is their bounding box converted with :func:`rowcol_to_xy`; a
    rectangle drawn from ``(r0 - 0.5, c0 - 0.5)`` to ``(r1 + 0.5, c1 + 0.5)`` covers pixels
    ``r0..r1`` × ``c0..c1`` and becomes ``(c0, r0, c1 + 1, r1 + 1)``.

    Parameters
    ----------
    corners_rc
        (K, 2) vertices ``(row, col)`` in the 2D image's data coordinates, K ≥ 2.

    Returns
    -------
    np.ndarray
        (4,) float64 ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``.
    """
    corners = np.asarray(corners_rc, dtype=np.float64)
    if corners.ndim != 2 or corners.shape[1] != 2 or corners.shape[0] < 2:
        raise ValueError(f"expected (K, 2) (row, col) vertices with K >= 2, got {corners.shape}")
    low = rowcol_to_xy(corners.min(axis=0))
    high = rowcol_to_xy(corners.max(axis=0))
    return np.concatenate([low, high])
