"""Fine-tuning losses on SAM's low-resolution mask logits.

Dice + binary cross-entropy per mask, the best of the multimask outputs per prompt, plus the mean
squared error between the predicted IoU and the real one (automatic segmentation's
``pred_iou_thresh`` relies on that score staying calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossParts", "mask_losses", "real_iou"]


@dataclass(frozen=True)
class LossParts:
    """Total loss and its parts (the parts detached, for logging)."""

    total: torch.Tensor
    dice: float
    bce: float
    iou_mse: float


def real_iou(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with the target inside ``region``.

    Parameters
    ----------
    logits
        (B, M, L, L) mask logits.
    target, region
        (B, L, L) float 0/1: the object, and the pixels whose label is known.

    Returns
    -------
    torch.Tensor
        (B, M) float32, no gradient.
    """
    with torch.no_grad():
        pred = (logits > 0).float() * region[:, None]
        t = target[:, None]
        intersection = (pred * t).sum(dim=(-1, -2))
        union = (pred + t - pred * t).sum(dim=(-1, -2))
        return intersection / union.clamp(min=1.0)


def mask_losses(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    target: torch.Tensor,
    region: torch.Tensor,
    *,
    iou_weight: float = 1.0,
) -> LossParts:
    """Dice + BCE (best of the M masks per prompt) + ``iou_weight`` x MSE(predicted IoU, real IoU).

    Parameters
    ----------
    logits
        (B, M, L, L) low-resolution mask logits (M = 1 or 3).
    iou_predictions
        (B, M) the decoder's IoU estimates.
    target
        (B, L, L) float 0/1 ground truth in the low-resolution frame.
    region
        (B, L, L) float 0/1: pixels that take part in the loss (the object's dilated box and every
        labelled pixel; unlabelled pixels elsewhere are unknown with sparse labels).
    """
    logits = logits.float()
    weight = region[:, None]
    t = target[:, None].expand_as(logits)
    pixels = weight.sum(dim=(-1, -2)).clamp(min=1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * weight).sum(
        dim=(-1, -2)
    ) / pixels
    prob = torch.sigmoid(logits) * weight
    dice = 1.0 - (2.0 * (prob * t).sum(dim=(-1, -2)) + 1.0) / (
        prob.sum(dim=(-1, -2)) + t.sum(dim=(-1, -2)) + 1.0
    )
    per_mask = dice + bce  # (B, M)
    best = per_mask.argmin(dim=1, keepdim=True)
    segmentation = per_mask.gather(1, best).mean()
    iou_mse = F.mse_loss(iou_predictions.float(), real_iou(logits, target, region))
    total = segmentation + iou_weight * iou_mse
    return LossParts(
        total=total,
        dice=float(dice.detach().gather(1, best).mean()),
        bce=float(bce.detach().gather(1, best).mean()),
        iou_mse=float(iou_mse.detach()),
    )
