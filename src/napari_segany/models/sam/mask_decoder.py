"""SAM mask decoder: image and prompt embeddings -> low-resolution mask logits and IoU scores.

Parameter names follow the original segment_anything release (``mask_decoder.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm2d, MultiLayerPerceptron
from .two_way_transformer import ImageProjections, TwoWayTransformer


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
        projections: ImageProjections | None = None,
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
        projections
            :meth:`project_image` of these image embeddings and dense embeddings (then those
            two are not read again): the prompt-independent work, done once per image.

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
        _, channels, height, width = image_pe.shape
        flat_pe = image_pe.permute(0, 2, 3, 1).reshape(1, height * width, channels)
        if projections is None:
            image_tokens = self._image_tokens(image_embeddings, dense_prompt_embeddings)
        else:
            image_tokens = projections.tokens
        hs, keys = self.transformer(image_tokens, flat_pe, tokens, projections)
        selected = range(1, self.num_mask_tokens) if multimask_output else range(1)
        # Only the selected masks are computed: same values, less work.
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in selected], dim=1
        )
        masks = self._upscale_and_project(keys.reshape(batch, height, width, channels), hyper_in)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        iou_pred = iou_pred[:, 1:] if multimask_output else iou_pred[:, :1]
        return masks, iou_pred

    def project_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> ImageProjections:
        """The prompt-independent part of :meth:`forward` for one image: its ``projections``.

        ``image_embeddings`` (1, C, h, w); ``dense_prompt_embeddings`` (1, C, h, w), the same
        for every prompt that will use the result (the "no mask" embedding).
        """
        _, channels, height, width = image_pe.shape
        flat_pe = image_pe.permute(0, 2, 3, 1).reshape(1, height * width, channels)
        tokens = self._image_tokens(image_embeddings, dense_prompt_embeddings[:1])
        return self.transformer.project_image(tokens, flat_pe)

    @staticmethod
    def _image_tokens(image_embeddings: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B or 1, C, h, w) embeddings + dense embeddings -> (B or 1, h * w, C) contiguous, the
        channels-last layout of every product of the decoder."""
        if dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]  # "no mask": one for all prompts
        src = image_embeddings + dense
        batch, channels, height, width = src.shape
        out = torch.empty(batch, height, width, channels, dtype=src.dtype, device=src.device)
        out.copy_(src.permute(0, 2, 3, 1))
        return out.view(batch, height * width, channels)

    def _upscale_and_project(self, src: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """``hyper_in @ output_upscaling(src)``, computed channels last.

        The two stride-2, kernel-2 transposed convolutions are per-pixel matrix products whose
        outputs are 2 x 2 sub-pixel blocks; layer norm and GELU act per pixel, and the
        hypernetwork product reduces the channels before the single reordering into an image.

        Parameters
        ----------
        src
            (B, h, w, C) image tokens after the transformer.
        hyper_in
            (B, M, C / 8) mask weights from the hypernetwork MLPs.

        Returns
        -------
        torch.Tensor
            (B, M, 4h, 4w) mask logits.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        batch, height, width, channels = src.shape
        mid, out = conv1.out_channels, conv2.out_channels
        # (C_in, C_out, 2, 2) -> (C_in, 2 * 2 * C_out): columns ordered (sub-row, sub-col, channel).
        weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid)
        weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)
        x = torch.addmm(conv1.bias.repeat(4), src.reshape(-1, channels), weight1).view(-1, mid)
        x = F.gelu(F.layer_norm(x, (mid,), norm.weight, norm.bias, norm.eps))
        x = F.gelu(torch.addmm(conv2.bias.repeat(4), x, weight2))
        masks = torch.bmm(hyper_in, x.view(batch, -1, out).transpose(1, 2))
        n_masks = hyper_in.shape[1]
        # (b, m, i, j, di1, dj1, di2, dj2) -> (b, m, di1, di2, dj1, dj2, i, j), then a pixel shuffle
        # by 4 interleaves the 16 sub-pixels: twice as fast as one permute into the image.
        masks = masks.view(batch, n_masks, height, width, 2, 2, 2, 2).permute(
            0, 1, 4, 6, 5, 7, 2, 3
        )
        masks = masks.reshape(batch, n_masks * 16, height, width)
        return F.pixel_shuffle(masks, 4)
