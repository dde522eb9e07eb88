"""Fixtures of the fine-tuning tests: synthetic bright disks and one shared decoder-mode run."""

from __future__ import annotations

import numpy as np
import pytest

DISK_IMAGE_SIZE = 128  # the tiny model's input size: one tile per image


def bright_disks(seed: int, count: int = 4, size: int = DISK_IMAGE_SIZE):
    """(size, size) float image of bright, non-overlapping disks on a dark noisy background and
    (size, size) int32 labels 1..count."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 30.0)
    labels = np.zeros((size, size), np.int32)
    rows, cols = np.mgrid[:size, :size]
    for value in range(1, count + 1):
        radius = rng.uniform(9, 15)
        cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
        disk = ((rows - cy) ** 2 + (cols - cx) ** 2 < radius**2) & (labels == 0)
        image[disk] = 200.0
        labels[disk] = value
    image += rng.normal(0, 5, image.shape)
    return image, labels


@pytest.fixture(scope="session")
def disk_data():
    """Four training and two held-out (image, labels) lists."""
    train = [bright_disks(seed) for seed in range(4)]
    held_out = [bright_disks(seed) for seed in (10, 11)]
    return (
        [i for i, _ in train],
        [lab for _, lab in train],
        [i for i, _ in held_out],
        [lab for _, lab in held_out],
    )


@pytest.fixture(scope="session")
def decoder_run(tiny_sam_model, disk_data):
    """A decoder-mode run of 400 steps, scored on its own training images (fixed length)."""
    from napari_segany.training import FinetuneSettings, finetune_sam

    images, labels, _, _ = disk_data
    before = {k: v.clone() for k, v in tiny_sam_model.state_dict().items()}
    result = finetune_sam(
        tiny_sam_model,
        images,
        labels,
        steps=400,
        val_images=images,
        val_labels=labels,
        settings=FinetuneSettings(learning_rate=3e-3, patience=1000, training_precision="fp32"),
    )
    return before, result
