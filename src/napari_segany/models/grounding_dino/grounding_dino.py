"""Grounding DINO: open-vocabulary box detection from an image and a text prompt.

The composite model: Swin image backbone + an extra stride-64 level, BERT text encoder, per-level
input projections, the fusion encoder, language-guided (two-stage) query selection, the decoder
with iterative box refinement, a contrastive class head against the text tokens and a box MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bert import BertTextEncoder
from .config import GroundingDinoConfig
from .decoder import GroundingDinoDecoder, MLPHead
from .encoder import GroundingDinoEncoder
from .position_encoding import feature_map_position_embedding
from .swin import SwinBackbone
from .text_masks import phrase_attention_masks

# [CLS], [SEP], "." and "?" in the bert-base-uncased vocabulary.
DEFAULT_DELIMITER_TOKEN_IDS = (101, 102, 1012, 1029)


@dataclass
class GroundingDinoOutput:
    """Raw detector outputs.

    Attributes
    ----------
    logits
        (B, Q, max_text_len) float32 similarity of every query with every text token (``-inf``
        for padding and positions past the prompt).
    boxes
        (B, Q, 4) float32 boxes (cx, cy, w, h) normalized to the model input.
    """

    logits: torch.Tensor
    boxes: torch.Tensor


class GroundingDino(nn.Module):
    """Grounding DINO detector.

    Parameters
    ----------
    config
        Architecture (see ``grounding_dino_tiny_config``).
    delimiter_token_ids
        Token ids that delimit phrases ([CLS], [SEP], ".", "?") in the tokenizer's vocabulary.
    """

    def __init__(
        self,
        config: GroundingDinoConfig,
        *,
        delimiter_token_ids: tuple[int, ...] = DEFAULT_DELIMITER_TOKEN_IDS,
    ) -> None:
        super().__init__()
        if config.two_stage_bbox_embed_share:
            raise ValueError("two_stage_bbox_embed_share=True is not supported")
        self.config = config
        d = config.d_model
        self.backbone = SwinBackbone(config.backbone)
        channels = config.backbone.out_channels
        projections = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in channels]
        in_channels = channels[-1]
        for _ in range(config.num_feature_levels - len(channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, d, 3, stride=2, padding=1), nn.GroupNorm(32, d)
                )
            )
            in_channels = d
        self.input_proj_vision = nn.ModuleList(projections)
        self.text_backbone = BertTextEncoder(config.text)
        self.text_projection = nn.Linear(config.text.hidden_size, d)
        self.query_position_embeddings = nn.Embedding(config.num_queries, d)
        self.level_embed = nn.Parameter(torch.zeros(config.num_feature_levels, d))
        self.encoder = GroundingDinoEncoder(config)
        self.decoder = GroundingDinoDecoder(config)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_output_bbox_embed = MLPHead(d, d, 4, 3)
        heads = 1 if config.decoder_bbox_embed_share else config.decoder_layers
        self.bbox_embed = nn.ModuleList(MLPHead(d, d, 4, 3) for _ in range(heads))
        self._delimiters = tuple(int(i) for i in delimiter_token_ids)
        self.register_buffer(
            "delimiter_token_ids",
            torch.tensor(self._delimiters, dtype=torch.long),
            persistent=False,
        )

    def reset_buffers(self) -> None:
        """Recompute the non-persistent delimiter ids (after building on the meta device)."""
        self.delimiter_token_ids = torch.tensor(
            self._delimiters, dtype=torch.long, device=self.level_embed.device
        )

    @property
    def device(self) -> torch.device:
        return self.level_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.level_embed.dtype

    def _box_head(self, layer: int) -> nn.Module:
        return self.bbox_embed[0 if self.config.decoder_bbox_embed_share else layer]

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        on_block=None,
    ) -> GroundingDinoOutput:
        """Detect the phrases of ``input_ids`` in ``pixel_values``.

        Parameters
        ----------
        pixel_values
            (B, 3, H, W) ImageNet-normalized RGB, any dtype (cast to the model's).
        input_ids
            (B, T) token ids, T ≤ ``max_text_len``, starting with [CLS] and ending with [SEP].
        attention_mask
            (B, T) 1 for real tokens, 0 for padding; all ones when omitted.
        token_type_ids
            (B, T); zeros when omitted.
        on_block
            ``on_block(done, total)`` called after every image backbone block.
        """
        if input_ids.shape[1] > self.config.max_text_len:
            raise ValueError(
                f"{input_ids.shape[1]} text tokens exceed the maximum of {self.config.max_text_len}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        text_token_mask = attention_mask.bool()
        text_attend, position_ids = phrase_attention_masks(input_ids, self.delimiter_token_ids)
        text = self.text_backbone(input_ids, text_attend, token_type_ids, position_ids)
        text = self.text_projection(text)

        vision, positions, spatial_shapes = self._multi_scale_features(
            pixel_values.to(self.dtype), on_block
        )
        vision, text = self.encoder(
            vision, positions, spatial_shapes, text, ~text_token_mask, text_attend, position_ids
        )
        queries, reference_points = self._select_queries(
            vision, text, text_token_mask, spatial_shapes
        )
        last = self.config.decoder_layers - 1
        hidden, reference_points = self.decoder(
            queries,
            reference_points,
            vision,
            spatial_shapes,
            text,
            text_token_mask,
            [self._box_head(i) for i in range(self.config.decoder_layers)],
        )
        logits = self._contrastive_logits(hidden, text, text_token_mask)
        delta = self._box_head(last)(hidden).float()
        boxes = (delta + torch.special.logit(reference_points, eps=1e-5)).sigmoid()
        return GroundingDinoOutput(logits=logits, boxes=boxes)

    def _multi_scale_features(self, pixels: torch.Tensor, on_block):
        """Backbone maps + extra levels → flattened tokens (B, S, C), positions, level shapes."""
        maps = self.backbone(pixels, on_block=on_block)
        sources = [proj(m) for proj, m in zip(self.input_proj_vision, maps, strict=False)]
        for level in range(len(maps), self.config.num_feature_levels):
            previous = maps[-1] if level == len(maps) else sources[-1]
            sources.append(self.input_proj_vision[level](previous))
        tokens, positions, shapes = [], [], []
        for level, source in enumerate(sources):
            height, width = source.shape[-2:]
            shapes.append((int(height), int(width)))
            tokens.append(source.flatten(2).transpose(1, 2))
            position = feature_map_position_embedding(
                height,
                width,
                self.config.d_model,
                self.config.positional_embedding_temperature,
                source.device,
            ).to(source.dtype)
            positions.append(position + self.level_embed[level])
        position = torch.cat(positions, 0)[None].expand(pixels.shape[0], -1, -1)
        return torch.cat(tokens, 1), position, shapes

    def _select_queries(self, vision, text, text_token_mask, spatial_shapes):
        """Two-stage selection: the ``num_queries`` image tokens most similar to the text."""
        proposals, valid = _proposal_boxes(spatial_shapes, vision.device)
        object_query = vision.masked_fill(~valid[None, :, None], 0.0)
        object_query = self.enc_output_norm(self.enc_output(object_query))
        scores = self._contrastive_logits(object_query, text, text_token_mask, pad=False)
        coords = self.encoder_output_bbox_embed(object_query).float() + proposals[None]
        # A very elongated image may have fewer tokens than queries: keep them all then.
        count = min(self.config.num_queries, scores.shape[1])
        top = torch.topk(scores.max(-1)[0], count, dim=1)[1]
        reference_points = torch.gather(coords, 1, top[..., None].expand(-1, -1, 4)).sigmoid()
        batch = vision.shape[0]
        queries = self.query_position_embeddings.weight[None, :count].expand(batch, -1, -1)
        return queries, reference_points

    def _contrastive_logits(self, queries, text, text_token_mask, pad: bool = True):
        logits = queries.float() @ text.float().transpose(-1, -2)
        logits = logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))
        if not pad:
            return logits
        out = logits.new_full((*logits.shape[:-1], self.config.max_text_len), float("-inf"))
        out[..., : logits.shape[-1]] = logits
        return out


def _proposal_boxes(
    spatial_shapes: list[tuple[int, int]], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One square proposal per image token, size 0.05·2^level, in logit space (S, 4) float32.

    Returns the proposals (``inf`` where invalid) and the (S,) validity mask (boxes not touching
    the border band 0.01 / 0.99).
    """
    boxes = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device),
            torch.arange(width, dtype=torch.float32, device=device),
            indexing="ij",
        )
        centres = torch.stack(((xs + 0.5) / width, (ys + 0.5) / height), -1).reshape(-1, 2)
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        boxes.append(torch.cat((centres, sizes), -1))
    boxes = torch.cat(boxes, 0)
    valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1)
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid[:, None], float("inf"))
    return logits, valid
