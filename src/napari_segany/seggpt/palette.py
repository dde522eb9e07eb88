"""Label maps <-> colour masks: SegGPT paints labels as colours (numpy only).

The palette is the one transformers' ``SegGptImageProcessor`` builds (after the Painter COCO
panoptic colour scheme): label 0 (background) is black, labels 1..K are points of a
``base x base x base`` colour grid, ``base = int(K ** (1/3)) + 1``, counting down from white in
steps of ``256 // base``. Using the same palette makes our prompts, and so our results, identical
to transformers' for the same label maps.
"""

from __future__ import annotations

import numpy as np

MIN_COLOUR_STEP = 16
"""Smallest step (8-bit levels) between palette colours that we accept as separable."""


def palette_step(num_labels: int) -> int:
    """Step in 8-bit levels between neighbouring colours of the palette for ``num_labels``."""
    base = int(num_labels ** (1 / 3)) + 1
    return 256 // base


def _max_labels(min_step: int) -> int:
    count = 1
    while palette_step(count + 1) >= min_step:
        count += 1
    return count


MAX_LABELS = _max_labels(MIN_COLOUR_STEP)
"""Most labels the palette separates: beyond it neighbouring colours are closer than
:data:`MIN_COLOUR_STEP` levels (4096 labels: a 16 x 16 x 16 grid with steps of 16)."""


def build_palette(num_labels: int) -> np.ndarray:
    """Colours of labels ``0..num_labels``.

    Parameters
    ----------
    num_labels
        Number of labels besides the background, ``0 <= num_labels <= MAX_LABELS``.

    Returns
    -------
    np.ndarray
        (num_labels + 1, 3) uint8 RGB; row ``k`` is the colour of label ``k``, row 0 is black.
    """
    check_num_labels(num_labels)
    base = int(num_labels ** (1 / 3)) + 1
    step = 256 // base
    location = np.arange(num_labels)
    grid = np.stack((location // base**2, (location % base**2) // base, location % base), axis=-1)
    colours = 255 - grid * step
    return np.concatenate((np.zeros((1, 3), dtype=np.uint8), colours.astype(np.uint8)), axis=0)


def check_num_labels(num_labels: int) -> None:
    """Raise ``ValueError`` unless ``0 <= num_labels <= MAX_LABELS``."""
    if int(num_labels) != num_labels or num_labels < 0:
        raise ValueError(f"num_labels must be a non-negative integer, got {num_labels!r}")
    if num_labels > MAX_LABELS:
        raise ValueError(
            f"{num_labels} labels are more than the SegGPT colour palette separates: at most "
            f"{MAX_LABELS} labels (their colours are then {MIN_COLOUR_STEP} intensity levels apart; "
            f"beyond that the painted colours cannot be told apart reliably). Number the labels "
            f"consecutively (e.g. skimage.segmentation.relabel_sequential) or use fewer labels."
        )


def labels_to_rgb(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Paint a label map with a palette.

    Parameters
    ----------
    labels
        (H, W) non-negative integer label map, every value < ``len(palette)``.
    palette
        (K + 1, 3) uint8 colours.

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8 colour mask.
    """
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) >= len(palette):
        raise ValueError(
            f"label {int(labels.max())} has no colour in a palette of {len(palette) - 1} labels"
        )
    return np.asarray(palette, dtype=np.uint8)[labels]


def rgb_to_labels(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode a colour mask by the nearest palette colour (squared Euclidean distance in RGB).

    Parameters
    ----------
    rgb
        (..., 3) colours in 8-bit units (any real dtype; painted masks are floats in [0, 255]).
    palette
        (K + 1, 3) colours.

    Returns
    -------
    labels
        (...) int64 index of the nearest colour (the first one on ties).
    distance
        (...) float32 Euclidean distance to that colour, in 8-bit levels.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    colours = np.asarray(palette, dtype=np.float32)
    best = np.full(rgb.shape[:-1], np.inf, dtype=np.float32)
    labels = np.zeros(rgb.shape[:-1], dtype=np.int64)
    for index, colour in enumerate(colours):
        dist = np.sum((rgb - colour) ** 2, axis=-1)
        closer = dist < best
        best[closer] = dist[closer]
        labels[closer] = index
    return labels, np.sqrt(best)


def palette_from_colour_masks(masks: list[np.ndarray]) -> np.ndarray:
    """Palette of the distinct colours in RGB prompt masks: black first, the others sorted.

    Used when prompts come as colour masks without ``num_labels``; the predicted label ``k`` is
    then the ``k``-th colour of this palette.

    Parameters
    ----------
    masks
        (H, W, 3) uint8 colour masks.

    Returns
    -------
    np.ndarray
        (K + 1, 3) uint8.
    """
    colours = np.unique(np.concatenate([np.asarray(m).reshape(-1, 3) for m in masks]), axis=0)
    colours = colours[np.any(colours != 0, axis=1)]
    palette = np.concatenate((np.zeros((1, 3), dtype=np.uint8), colours.astype(np.uint8)))
    if len(palette) - 1 > MAX_LABELS:
        check_num_labels(len(palette) - 1)
    return palette
