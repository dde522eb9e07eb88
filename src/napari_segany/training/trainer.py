"""The trainable copies of a SAM model and one training step (used by ``iter_finetune_sam``).

The base model is never modified: the mask decoder and prompt encoder are copied in float32; in
LoRA mode the last encoder block gets a float32 copy with adapters, and the neck a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_segany.models.precision import resolve_dtype
from napari_segany.training.lora import add_lora, lora_state_dict
from napari_segany.training.losses import mask_losses
from napari_segany.training.prepared_tiles import (
    PreparedTile,
    PromptBatch,
    add_correction_clicks,
    sample_batch,
)
from napari_segany.training.saved_model import DECODER_PREFIX, LORA_PREFIX
from napari_segany.training.settings import FinetuneSettings

__all__ = ["FinetuneTrainer", "learning_rate_at"]


class FinetuneTrainer:
    """The trainable copies (decoder, adapted block and neck) and the forward pass of one step."""

    def __init__(self, model, settings: FinetuneSettings) -> None:
        self.settings = settings
        self.image_size = model.image_size
        self.prompt_encoder = copy.deepcopy(model.prompt_encoder).float().requires_grad_(False)
        self.decoder = copy.deepcopy(model.mask_decoder).float().requires_grad_(True).train()
        with torch.no_grad():
            self.image_pe = self.prompt_encoder.get_dense_pe().clone()
        self.block = self.neck = None
        self.block_index = len(model.image_encoder.blocks) - 1
        params = list(self.decoder.parameters())
        if settings.mode == "lora":
            self.block = add_lora(
                model.image_encoder.blocks[-1],
                rank=settings.lora_rank,
                alpha=settings.lora_alpha,
                seed=settings.seed,
            )
            self.neck = copy.deepcopy(model.image_encoder.neck).float().requires_grad_(False)
            params += [p for p in self.block.parameters() if p.requires_grad]
        # Weights and optimiser state stay float32; only the forward pass may run in bfloat16.
        self.device_type = model.device.type
        self.autocast_dtype = None
        if settings.training_precision == "bf16" or (
            settings.training_precision == "auto"
            and resolve_dtype("auto", model.device) == torch.bfloat16
        ):
            self.autocast_dtype = torch.bfloat16
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )

    def features(self, tile: PreparedTile) -> torch.Tensor:
        if self.block is None:
            return tile.features
        x = self.block(tile.tokens)
        return self.neck(x.permute(0, 3, 1, 2))

    def decode(self, features, batch, mask_input=None):
        points = None if batch.coords is None else (batch.coords, batch.labels)
        with torch.no_grad():
            sparse, dense = self.prompt_encoder(points=points, boxes=batch.boxes, masks=mask_input)
        return self.decoder(
            image_embeddings=features,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=batch.multimask,
        )

    def loss(self, tile, objects, kind, rng):
        s = self.settings
        first = "point" if kind == "correction" else kind
        batch = sample_batch(
            tile,
            objects,
            first,
            rng,
            box_jitter=s.box_jitter,
            negative_probability=0.0 if kind == "correction" else s.negative_point_probability,
        )
        with self.autocast():
            features = self.features(tile)
            mask_input = None
            if kind == "correction":
                with torch.no_grad():
                    logits, iou = self.decode(features.detach(), batch)
                batch, mask_input = add_correction_clicks(
                    batch, logits.float(), iou.float(), self.image_size
                )
            logits, iou = self.decode(features, batch, mask_input)
        return mask_losses(logits, iou, batch.target, batch.region, iou_weight=s.iou_loss_weight)

    def autocast(self):
        """bfloat16 autocast of the training forward pass, or nothing (float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def changed(self) -> dict[str, torch.Tensor]:
        state = {
            DECODER_PREFIX + k: v.detach().clone() for k, v in self.decoder.state_dict().items()
        }
        if self.block is not None:
            for k, v in lora_state_dict(self.block).items():
                state[f"{LORA_PREFIX}{self.block_index}.{k}"] = v
        return state

    def load_changed(self, state: dict[str, torch.Tensor]) -> None:
        self.decoder.load_state_dict(
            {k[len(DECODER_PREFIX) :]: v for k, v in state.items() if k.startswith(DECODER_PREFIX)}
        )
        if self.block is not None:
            with torch.no_grad():
                for k, v in state.items():
                    if k.startswith(LORA_PREFIX):
                        getattr(self.block.attn.qkv, k.rsplit(".", 1)[1]).copy_(v)

    @torch.no_grad()
    def validation_loss(self, tiles: Sequence[PreparedTile]) -> float:
        """Mean loss of tight boxes and centre points on held-out tiles (no randomness)."""
        from napari_segany.sam import transforms

        losses = []
        for tile in tiles:
            features = self.features(tile)
            objects = tile.objects
            target = torch.stack([o.target for o in objects])
            region = torch.stack([o.region for o in objects])
            boxes = transforms.apply_boxes(
                np.stack([o.prompts.box for o in objects]), tile.original_size, tile.input_size
            )
            centres = transforms.apply_coords(
                np.stack([o.prompts.centre for o in objects])[:, None],
                tile.original_size,
                tile.input_size,
            )
            for batch in (
                PromptBatch(
                    None, None, torch.as_tensor(boxes, dtype=torch.float32), False, target, region
                ),
                PromptBatch(
                    torch.as_tensor(centres, dtype=torch.float32),
                    torch.ones(len(objects), 1, dtype=torch.int64),
                    None,
                    True,
                    target,
                    region,
                ),
            ):
                logits, iou = self.decode(features, batch)
                losses.append(float(mask_losses(logits, iou, target, region).total))
        return float(np.mean(losses))


def learning_rate_at(step: int, total: int, warmup: int, settings: FinetuneSettings) -> float:
    base = settings.learning_rate
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    low = settings.final_lr_fraction
    return base * (low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress)))
