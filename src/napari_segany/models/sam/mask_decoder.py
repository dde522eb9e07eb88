"""SAM mask decoder: image and prompt embeddings -> low-resolution mask logits and IoU scores.

Parameter names follow the original segment_anything release (``mask_decoder.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerNorm2d, MultiLayerPerceptron
from .two_way_transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks per prompt with a two-way transformer.

    Mask 0 is the single-mask output; masks 1.. are the multimask (ambiguity-aware) outputs.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MultiLayerPerceptron(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MultiLayerPerceptron(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for B prompts on one image (or B images).

        Parameters
        ----------
        image_embeddings
            (1 or B, C, h, w) output of the image encoder.
        image_pe
            (1, C, h, w) positional encoding of the image grid.
        sparse_prompt_embeddings
            (B, N, C) point and box embeddings.
        dense_prompt_embeddings
            (B, C, h, w) mask embeddings.
        multimask_output
            Return the ``num_multimask_outputs`` ambiguity-aware masks instead of the single mask.

        Returns
        -------
        masks
            (B, M, 4h, 4w) mask logits, M = ``num_multimask_outputs`` or 1.
        iou_pred
            (B, M) predicted mask quality.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [
                output_tokens.unsqueeze(0).expand(batch, -1, -1),
                sparse_prompt_embeddings.to(output_tokens.dtype),
            ],
            dim=1,
        )
        src = image_embeddings + dense_prompt_embeddings  # broadcasts a single image over B prompts
        if src.shape[0] != batch:
            src = src.expand(batch, -1, -1, -1)
        _, channels, height, width = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        selected = range(1, self.num_mask_tokens) if multimask_output else range(1)
        # Only the selected masks are computed: same values, less work.
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in selected], dim=1
        )
        upscaled = self.output_upscaling(
            src.transpose(1, 2).reshape(batch, channels, height, width)
        )
        _, up_channels, up_h, up_w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(batch, up_channels, up_h * up_w)).reshape(
            batch, -1, up_h, up_w
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        iou_pred = iou_pred[:, 1:] if multimask_output else iou_pred[:, :1]
        return masks, iou_pred
