"""Helpers of the command-line tests: fast settings for tiny models and synthetic images."""

from __future__ import annotations

import numpy as np

# Tiny-model settings that find objects with random weights (the released thresholds find none).
EVERYTHING_FAST = [
    "--points-per-side",
    "6",
    "--pred-iou-thresh",
    "0",
    "--stability-score-thresh",
    "0",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "-q",
]


def blobs(shape: tuple[int, int], seed: int, count: int = 5) -> np.ndarray:
    """(H, W) uint8 image of bright discs on a noisy background."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros(shape, np.float32)
    for _ in range(count):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 14)
        image += ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(0.5, 1.0)
    return (image * 200 + rng.normal(0, 6, shape)).clip(0, 255).astype(np.uint8)
