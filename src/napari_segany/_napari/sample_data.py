"""Sample data: a small 3D stack of blobs generated on the fly (no download, numpy only).

The blobs move and grow from slice to slice, so the stack is a fair test of "segment one slice,
propagate through the rest" (SAM on one slice, then SegGPT through the stack). Intensities are
uint16 on a non-zero background with noise, so contrast limits matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_SHAPE = (16, 128, 128)
SAMPLE_SEED = 0


@dataclass(frozen=True)
class BlobTrack:
    """One blob: centre (row, col) and radius at the first slice, and their change per slice."""

    start_center: tuple[float, float]
    velocity: tuple[float, float]
    start_radius: float
    growth: float
    brightness: float

    def center(self, index: int) -> tuple[float, float]:
        return (
            self.start_center[0] + self.velocity[0] * index,
            self.start_center[1] + self.velocity[1] * index,
        )

    def radius(self, index: int) -> float:
        return self.start_radius + self.growth * index


SAMPLE_BLOBS = (
    BlobTrack((30.0, 30.0), (1.5, 1.0), 9.0, 0.35, 2600.0),
    BlobTrack((90.0, 40.0), (-1.0, 1.8), 12.0, 0.2, 1900.0),
    BlobTrack((45.0, 95.0), (2.0, -0.8), 7.0, 0.5, 3200.0),
    BlobTrack((100.0, 100.0), (-0.6, -0.5), 10.0, -0.25, 1400.0),
)


def blobs_stack(
    shape: tuple[int, int, int] = SAMPLE_SHAPE,
    *,
    blobs: tuple[BlobTrack, ...] = SAMPLE_BLOBS,
    background: float = 400.0,
    noise: float = 60.0,
    seed: int = SAMPLE_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a stack of soft-edged blobs that move and grow, with its ground-truth labels.

    Parameters
    ----------
    shape
        (slices, rows, cols) of the stack. Blob positions are given for 128 x 128 slices and are
        scaled to other sizes.
    blobs
        The blobs; blob ``i`` has label ``i + 1`` where it is the brightest object.
    background, noise
        Background intensity and the standard deviation of the Gaussian noise added everywhere.
    seed
        Seed of the noise, so the stack is the same on every call.

    Returns
    -------
    image : np.ndarray
        (slices, rows, cols) uint16.
    labels : np.ndarray
        (slices, rows, cols) int32; 0 is background, ``i + 1`` is inside blob ``i`` (the disc
        within its radius).
    """
    depth, rows, cols = shape
    scale = np.array([rows / 128.0, cols / 128.0])
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image = np.full(shape, background, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for z in range(depth):
        for label, blob in enumerate(blobs, start=1):
            cr, cc0 = np.array(blob.center(z)) * scale
            radius = max(blob.radius(z), 1.0) * float(scale.mean())
            distance = np.hypot(rr - cr, cc - cc0)
            # A soft edge (logistic over ~2 pixels) so the blobs look like cells, not discs.
            profile = 1.0 / (1.0 + np.exp((distance - radius) / 1.5))
            image[z] += blob.brightness * profile
            labels[z][distance <= radius] = label
    image += np.random.default_rng(seed).normal(0.0, noise, size=shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels


def make_sample_stack() -> list[tuple[np.ndarray, dict, str]]:
    """npe2 sample-data provider: the blobs stack as one uint16 image layer.

    Returns
    -------
    list of LayerData tuples
        One ``(data, kwargs, "image")`` tuple; ``data`` is (16, 128, 128) uint16, (Z, Y, X).
    """
    image, _ = blobs_stack()
    low, high = np.percentile(image, (0.5, 99.9))
    kwargs = {
        "name": "blobs stack",
        "contrast_limits": (float(low), float(high)),
        "colormap": "gray",
    }
    return [(image, kwargs, "image")]
