"""Turning any image a napari user has into the 8-bit RGB the models were trained on (numpy only)."""

from __future__ import annotations

import numpy as np

ROBUST_PERCENTILES = (0.5, 99.5)


def to_uint8_rgb(
    image: np.ndarray, contrast_limits: tuple[float, float] | None = None
) -> np.ndarray:
    """Convert an image to (H, W, 3) uint8 RGB.

    Parameters
    ----------
    image
        (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha is dropped), any
        numeric or boolean dtype.
    contrast_limits
        (low, high) intensities mapped to 0 and 255 (napari's layer contrast limits). When not
        given: uint8 is used as is, booleans map to 0/255, floats already within [0, 1] are scaled
        by 255, and anything else is stretched between its 0.5th and 99.5th percentiles.

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8.

    Raises
    ------
    ValueError
        Wrong number of dimensions or channels, an empty image, a non-numeric dtype, or contrast
        limits that are reversed or not finite.
    TypeError
        A complex image (pick its magnitude, real part or phase first).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(
            f"expected a (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA image, got shape "
            f"{image.shape}; for other channel counts pick or combine channels first"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(
            f"complex images ({image.dtype}) cannot be segmented: pass np.abs(image) (magnitude), "
            f"image.real or np.angle(image) instead"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(f"image dtype {image.dtype} is not numeric")
    if contrast_limits is not None:
        contrast_limits = check_contrast_limits(contrast_limits)
    if image.dtype == bool:
        scaled = image.astype(np.uint8) * 255
    elif contrast_limits is not None:
        scaled = rescale_to_uint8(image, *contrast_limits)
    elif image.dtype == np.uint8:
        scaled = image
    elif np.issubdtype(image.dtype, np.floating) and _within_unit_range(image):
        scaled = rescale_to_uint8(image, 0.0, 1.0)
    else:
        finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
        if finite.size == 0:
            raise ValueError("image has no finite values")
        low, high = np.percentile(finite, ROBUST_PERCENTILES)
        scaled = rescale_to_uint8(image, float(low), float(high))
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled)


def check_contrast_limits(contrast_limits: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as floats; ``ValueError`` unless both are finite and ``low <= high``."""
    try:
        low, high = (float(v) for v in contrast_limits)
    except (TypeError, ValueError):
        raise ValueError(
            f"contrast limits must be two numbers (low, high), got {contrast_limits!r}"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"contrast limits must be finite numbers, got ({low}, {high})")
    if high < low:
        raise ValueError(
            f"contrast limits are reversed: low {low} > high {high}; give them as (low, high)"
        )
    return low, high


def rescale_to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to ``[0, 255]``, clipping outside; NaN becomes 0.

    Integer images up to the uint64/int64 extremes neither overflow nor divide by zero: when
    ``high <= low`` in floating point (e.g. a constant image) values above ``low`` become 255 and
    the rest 0.
    """
    low, high = float(low), float(high)
    values = image.astype(np.float32)
    if not high - low > 0:
        out = np.where(values > low, 255.0, 0.0)
    else:
        out = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _within_unit_range(image: np.ndarray) -> bool:
    finite = image[np.isfinite(image)]
    return finite.size > 0 and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0
