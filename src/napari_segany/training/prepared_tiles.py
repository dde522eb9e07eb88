"""Tiles ready for training: cached encoder outputs, low-resolution targets, prompt batches.

The image encoder runs once per tile, through :class:`~napari_segany.sam.SamPredictor` (so the
resizing, normalisation and padding are exactly those of inference). Decoder mode keeps the image
embedding; LoRA mode also keeps the tokens entering the last encoder block (captured by a forward
pre-hook), so a training step runs only that block, the neck and the decoder.

Memory: per tile one embedding (ViT-B: 256 x 64 x 64 float32, 4 MB; with LoRA also the 768 x 64
x 64 tokens, 12.6 MB) and per object two (256, 256) float32 maps (0.5 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_segany.sam import transforms
from napari_segany.training.prompts import (
    ObjectPrompts,
    correction_click,
    jitter_box,
    object_prompts,
)
from napari_segany.training.tiles import TrainingTile

__all__ = ["PreparedObject", "PreparedTile", "PromptBatch", "prepare_tile", "sample_batch"]


@dataclass
class PreparedObject:
    """One object: prompt material (tile pixels) and (L, L) float 0/1 target and loss region."""

    value: int
    prompts: ObjectPrompts
    target: torch.Tensor
    region: torch.Tensor


@dataclass
class PreparedTile:
    """One tile: cached encoder outputs in float32, geometry, labels and objects."""

    features: torch.Tensor  # (1, C, h, w) image embedding of the base model
    tokens: torch.Tensor | None  # (1, h, w, C_enc) tokens entering the last block (LoRA mode)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    labels: np.ndarray
    objects: list[PreparedObject]


@dataclass
class PromptBatch:
    """Prompts for B objects of one tile in the model input frame, with their targets."""

    coords: torch.Tensor | None  # (B, N, 2) (x, y)
    labels: torch.Tensor | None  # (B, N) 1 / 0 / -1
    boxes: torch.Tensor | None  # (B, 4)
    multimask: bool
    target: torch.Tensor  # (B, L, L)
    region: torch.Tensor  # (B, L, L)


def _to_low_res(
    mask: np.ndarray, input_size: tuple[int, int], image_size: int, low_res: int
) -> torch.Tensor:
    """(h, w) 0/1 mask of a tile -> (L, L) float fraction of each low-resolution pixel it covers."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(input_size):
        t = F.interpolate(t, size=input_size, mode="bilinear", align_corners=False)
    canvas = torch.zeros(1, 1, image_size, image_size)
    canvas[..., : input_size[0], : input_size[1]] = t
    return F.interpolate(canvas, size=(low_res, low_res), mode="area")[0, 0]


@torch.no_grad()
def prepare_tile(
    predictor,
    tile: TrainingTile,
    rng: np.random.Generator,
    *,
    keep_tokens: bool,
    min_edge_distance: float = 10.0,
) -> PreparedTile:
    """Run the encoder on one tile and precompute every object's targets and prompt material."""
    model = predictor.model
    captured: list[torch.Tensor] = []
    handle = None
    if keep_tokens:
        last = model.image_encoder.blocks[-1]
        handle = last.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        predictor.set_image(tile.image)
    finally:
        if handle is not None:
            handle.remove()
    # Clones outside inference mode: inference tensors cannot be saved for backward.
    with torch.inference_mode(False):
        features = predictor.get_image_embedding().to(torch.float32).clone()
        tokens = captured[0].to(torch.float32).clone() if captured else None
    original_size = tuple(int(s) for s in predictor.original_size)
    input_size = tuple(int(s) for s in predictor.input_size)
    size = model.image_size
    low = model.low_res_mask_size[0]
    labelled = _to_low_res(tile.labels > 0, input_size, size, low) >= 0.5
    objects = []
    for value in tile.object_ids:
        mask = tile.labels == value
        prompts = object_prompts(mask, rng, min_edge_distance=min_edge_distance)
        target = (_to_low_res(mask, input_size, size, low) >= 0.5).float()
        x0, y0, x1, y1 = transforms.apply_boxes(
            prompts.dilated_box.astype(np.float64), original_size, input_size
        ) * (low / size)
        region = labelled.clone()
        region[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1] = True
        objects.append(PreparedObject(value, prompts, target, region.float()))
    return PreparedTile(features, tokens, original_size, input_size, tile.labels, objects)


def sample_batch(
    tile: PreparedTile,
    objects: list[PreparedObject],
    kind: str,
    rng: np.random.Generator,
    *,
    box_jitter: float = 0.1,
    negative_probability: float = 0.5,
) -> PromptBatch:
    """Prompts of one kind for ``objects``: ``"box"`` (jittered, one mask) or ``"point"`` (a random
    interior point, sometimes a negative point from the dilated box, three masks)."""
    target = torch.stack([o.target for o in objects])
    region = torch.stack([o.region for o in objects])
    if kind == "box":
        boxes = np.stack(
            [
                jitter_box(o.prompts.box, rng, tile.original_size, fraction=box_jitter)
                for o in objects
            ]
        )
        boxes = transforms.apply_boxes(boxes, tile.original_size, tile.input_size)
        return PromptBatch(
            None, None, torch.as_tensor(boxes, dtype=torch.float32), False, target, region
        )
    coords = np.zeros((len(objects), 2, 2))
    labels = np.full((len(objects), 2), -1, dtype=np.int64)
    for i, o in enumerate(objects):
        candidates = o.prompts.interior if len(o.prompts.interior) else o.prompts.centre[None]
        coords[i, 0] = candidates[rng.integers(len(candidates))]
        labels[i, 0] = 1
        if len(o.prompts.negatives) and rng.random() < negative_probability:
            coords[i, 1] = o.prompts.negatives[rng.integers(len(o.prompts.negatives))]
            labels[i, 1] = 0
    if (labels[:, 1] == -1).all():
        coords, labels = coords[:, :1], labels[:, :1]
    coords = transforms.apply_coords(coords, tile.original_size, tile.input_size)
    return PromptBatch(
        torch.as_tensor(coords, dtype=torch.float32),
        torch.as_tensor(labels),
        None,
        True,
        target,
        region,
    )


def add_correction_clicks(
    batch: PromptBatch,
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    image_size: int,
) -> tuple[PromptBatch, torch.Tensor]:
    """A follow-up batch: each object's most confident mask is corrected by one simulated click.

    Parameters
    ----------
    batch
        The first round's point batch.
    logits, iou_predictions
        (B, M, L, L) and (B, M) outputs of the first round (detached).
    image_size
        Side of the model input; clicks found in the (L, L) frame are mapped to it.

    Returns
    -------
    batch, mask_input
        Points with the click appended (label -1 where the mask was already exact), single-mask
        output; and (B, 1, L, L) logits of the chosen masks, to give as ``mask_input``.
    """
    best = iou_predictions.argmax(dim=1)
    chosen = logits[torch.arange(len(best)), best][:, None]
    low = logits.shape[-1]
    prediction = (chosen[:, 0] > 0).numpy()
    target = batch.target.numpy() > 0.5
    region = batch.region.numpy() > 0.5
    clicks = np.zeros((len(best), 1, 2), dtype=np.float32)
    labels = np.full((len(best), 1), -1, dtype=np.int64)
    for i in range(len(best)):
        click = correction_click(prediction[i], target[i], region[i])
        if click is not None:
            clicks[i, 0] = (click[0] + 0.5) * (image_size / low)
            labels[i, 0] = click[1]
    coords = torch.cat([batch.coords, torch.from_numpy(clicks)], dim=1)
    point_labels = torch.cat([batch.labels, torch.from_numpy(labels)], dim=1)
    follow_up = PromptBatch(coords, point_labels, None, False, batch.target, batch.region)
    return follow_up, chosen
