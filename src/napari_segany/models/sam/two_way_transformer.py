"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Parameter names follow the original segment_anything release (``mask_decoder.transformer.*``).

The attentions between the few prompt tokens (about 7) and the many image tokens (4096) are
computed without projecting every image token to queries, keys or values: the projections are
folded into the token side by associativity (``(X W^T) K^T = X (W^T K^T)``, and softmax rows sum to
one). Same result up to rounding, about half the arithmetic of the click-to-mask path.

The first layer's image-side projections do not depend on the prompts (the image tokens have not
been updated yet): :class:`ImageProjections` holds them, computed once per image embedding
(:meth:`TwoWayTransformer.project_image`), so a click only pays for the products with its few
tokens there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeedForward


@dataclass(frozen=True)
class ImageProjections:
    """Prompt-independent image side of the first two-way block, for one image (batch 1).

    Attributes
    ----------
    tokens
        (1, N, C) image tokens (embedding plus the "no mask" dense embedding), contiguous.
    keys_t
        (heads, d, N) token-to-image keys, ``k_proj(tokens + pe)`` without its bias (a bias
        shifts every logit of a softmax row equally), transposed.
    values
        (heads, N, d) token-to-image values, ``v_proj(tokens)``.
    queries_t
        (heads, d, N) image-to-token queries, ``q_proj(tokens + pe)``, transposed.
    """

    tokens: torch.Tensor
    keys_t: torch.Tensor
    values: torch.Tensor
    queries_t: torch.Tensor


class DownsampledAttention(nn.Module):
    """Multi-head attention whose queries, keys and values are projected to ``dim / downsample_rate``."""

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embed_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(
                f"num_heads {num_heads} must divide the attention width {internal_dim}"
            )
        self.head_dim = internal_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, internal_dim)
        self.k_proj = nn.Linear(embed_dim, internal_dim)
        self.v_proj = nn.Linear(embed_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embed_dim)

    @staticmethod
    def _project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` for (B, T, C) through a 2D product (3D bf16 inputs take a slow CPU path)."""
        return layer(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def project_heads(
        self, layer: nn.Linear, image: torch.Tensor, *, bias: bool = True, transpose: bool = False
    ) -> torch.Tensor:
        """(1, N, C) image tokens -> (heads, N, d), or (heads, d, N) with ``transpose``."""
        out = F.linear(image[0], layer.weight, layer.bias if bias else None)
        out = out.view(-1, self.num_heads, self.head_dim)
        if transpose:
            return out.permute(1, 2, 0).contiguous()
        return out.transpose(0, 1).contiguous()

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention: q (B, N_q, C), k and v (B, N_k, C) -> (B, N_q, C)."""
        q = self._split_heads(self._project(self.q_proj, q))
        k = self._split_heads(self._project(self.k_proj, k))
        v = self._split_heads(self._project(self.v_proj, v))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self._project(self.out_proj, out.transpose(1, 2).reshape(batch, tokens, -1))

    def tokens_to_image(
        self,
        tokens: torch.Tensor,
        image_keys: torch.Tensor | ImageProjections,
        image_values: torch.Tensor | None,
    ) -> torch.Tensor:
        """Few token queries attend to many image keys; same result as ``forward``.

        Parameters
        ----------
        tokens
            (B, T, C) queries.
        image_keys, image_values
            (B or 1, N, C) image tokens (with and without positional encoding); or the first
            block's :class:`ImageProjections` of one image (``image_values`` unused).

        Returns
        -------
        torch.Tensor
            (B, T, C).
        """
        batch, n_tokens, channels = tokens.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self._project(self.q_proj, tokens).reshape(batch, n_tokens, heads, head_dim)
        if isinstance(image_keys, ImageProjections):  # projected once per image
            # (heads, B * T, d) queries against (heads, d, N) keys: one product per head.
            q = q.permute(2, 0, 1, 3).reshape(heads, batch * n_tokens, head_dim) * head_dim**-0.5
            probs = torch.softmax(torch.bmm(q, image_keys.keys_t), dim=-1)
            out = torch.bmm(probs, image_keys.values).view(heads, batch, n_tokens, head_dim)
            out = out.permute(1, 2, 0, 3).reshape(batch, n_tokens, heads * head_dim)
            return self._project(self.out_proj, out)
        # Fold the key projection into the queries; its bias shifts every logit of a row equally.
        folded = torch.einsum(
            "bthd,hdc->bhtc", q, self.k_proj.weight.view(heads, head_dim, channels)
        )
        folded = folded.reshape(batch, heads * n_tokens, channels) * head_dim**-0.5
        # The softmax runs over the long, contiguous image axis of (token, image) logits.
        if image_keys.shape[0] == 1:  # one image for every prompt: a single product
            # (token, image) logits straight from the product with the transposed image: as fast
            # as the (image, token) layout and no transposing copy before the softmax.
            logits = torch.mm(folded.reshape(-1, channels), image_keys[0].t())
            probs = torch.softmax(logits, dim=-1)
            mixed = probs @ image_values[0]
        else:
            logits = torch.bmm(image_keys, folded.transpose(1, 2))
            probs = torch.softmax(logits.transpose(1, 2).contiguous(), dim=-1)
            mixed = torch.bmm(probs, image_values)
        mixed = mixed.reshape(batch, heads, n_tokens, channels)
        # Values: softmax rows sum to one, so the projection (and its bias) applies after mixing.
        out = torch.einsum(
            "bhtc,hdc->bthd", mixed, self.v_proj.weight.view(heads, head_dim, channels)
        )
        out = out + self.v_proj.bias.view(heads, head_dim)
        return self._project(self.out_proj, out.reshape(batch, n_tokens, heads * head_dim))

    def image_to_tokens(
        self,
        image_queries: torch.Tensor | ImageProjections,
        tokens: torch.Tensor,
        token_values: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Many image queries attend to few token keys; same result as ``forward`` (+ residual).

        Parameters
        ----------
        image_queries
            (B or 1, N, C) image tokens with positional encoding; or the first block's
            :class:`ImageProjections` of one image.
        tokens, token_values
            (B, T, C) keys and values.
        residual
            (B or 1, N, C) added to the result, if given.

        Returns
        -------
        torch.Tensor
            (B, N, C).
        """
        batch, n_tokens, channels = tokens.shape
        heads, head_dim = self.num_heads, self.head_dim
        k = (
            self._project(self.k_proj, tokens).reshape(batch, n_tokens, heads, head_dim)
            * head_dim**-0.5
        )
        v = self._project(self.v_proj, token_values).reshape(batch, n_tokens, heads, head_dim)
        if isinstance(image_queries, ImageProjections):  # projected once per image
            queries_t = image_queries.queries_t
            n_image = queries_t.shape[-1]
            keys = k.permute(2, 0, 1, 3).reshape(heads, batch * n_tokens, head_dim)
            logits = torch.bmm(keys, queries_t).view(heads, batch, n_tokens, n_image)
            logits = logits.transpose(0, 1) if batch > 1 else logits.view(1, heads, n_tokens, -1)
            return self._mix_projected_values(logits, v, residual)
        # Fold the query projection into the keys: logits = X (W_q^T K^T) + b_q K^T.
        folded = torch.einsum(
            "hdc,bthd->bcht", self.q_proj.weight.view(heads, head_dim, channels), k
        )
        query_bias = torch.einsum("hd,bthd->bht", self.q_proj.bias.view(heads, head_dim), k)
        n_image = image_queries.shape[1]
        # The softmax over the few tokens runs on a (head, token, image) array, vectorised over
        # images.
        if image_queries.shape[0] == 1:  # (head * token, image) directly, as in tokens_to_image
            rows = folded.permute(0, 2, 3, 1).reshape(batch * heads * n_tokens, channels)
            logits = torch.addmm(query_bias.reshape(-1, 1), rows, image_queries[0].t())
        else:
            logits = torch.baddbmm(
                query_bias.reshape(batch, 1, heads * n_tokens),
                image_queries,
                folded.reshape(batch, channels, heads * n_tokens),
            ).transpose(1, 2)
        logits = logits.contiguous().view(batch, heads, n_tokens, n_image)
        return self._mix_projected_values(logits, v, residual)

    def _mix_projected_values(
        self, logits: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """Softmax over the tokens of (B, heads, T, N) logits, then the values with the output
        projection folded in: (B, N, C) (+ residual)."""
        batch, heads, n_tokens, n_image = logits.shape
        channels = self.out_proj.out_features
        head_dim = self.head_dim
        probs = torch.softmax(logits, dim=2).reshape(batch, heads * n_tokens, n_image)
        # Fold the output projection into the values: out = sum_h P_h (V_h W_o,h^T) + b_o.
        out_weight = self.out_proj.weight.view(channels, heads, head_dim)
        projected_values = torch.einsum("bthd,chd->bhtc", v, out_weight).reshape(
            batch, heads * n_tokens, channels
        )
        # The output bias rides along as one more value row with probability 1 everywhere, and the
        # residual is accumulated by the product itself: no extra pass over the (N, C) result.
        probs = torch.cat([probs, probs.new_ones(batch, 1, n_image)], dim=1)
        bias = self.out_proj.bias.to(projected_values.dtype).expand(batch, 1, channels)
        projected_values = torch.cat([projected_values, bias], dim=1)
        if residual is None:
            return torch.bmm(probs.transpose(1, 2), projected_values)
        return torch.baddbmm(residual, probs.transpose(1, 2), projected_values)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = DownsampledAttention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.cross_attn_token_to_image = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = FeedForward(embed_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm4 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.cross_attn_image_to_token = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projections: ImageProjections | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, T, C), keys (B or 1, N, C) and their positional encodings -> updated both.

        ``keys`` may have batch 1 for B prompts on one image; the returned keys have batch B.
        ``projections`` are this block's image side computed beforehand from ``keys``
        (:meth:`TwoWayTransformer.project_image`).
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        if projections is None:
            k = keys + key_pe  # keys do not change until the last step: used twice
            to_image, to_tokens = (k, keys), k
        else:
            to_image, to_tokens = (projections, None), projections
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, *to_image))
        queries = self.norm3(
            queries + self.mlp(queries.reshape(-1, queries.shape[-1])).view_as(queries)
        )

        q = queries + query_pe
        keys = self.norm4(
            self.cross_attn_image_to_token.image_to_tokens(to_tokens, q, queries, residual=keys)
        )
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks followed by a last token-to-image attention."""

    def __init__(
        self,
        *,
        depth: int,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        layer_norm_eps: float = 1e-5,
        final_layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embed_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                layer_norm_eps=layer_norm_eps,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = DownsampledAttention(
            embed_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embed_dim, eps=final_layer_norm_eps)

    def project_image(self, image_tokens: torch.Tensor, image_pe: torch.Tensor) -> ImageProjections:
        """The first block's prompt-independent image side, for :meth:`forward`'s ``projections``.

        ``image_tokens`` (1, h * w, C) and ``image_pe`` (1, h * w, C) as for :meth:`forward`.
        """
        if image_tokens.shape[0] != 1:
            raise ValueError(f"one image at a time, not {image_tokens.shape[0]}")
        first = self.layers[0]
        tokens = image_tokens.contiguous()
        tokens_pe = tokens + image_pe
        to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return ImageProjections(
            tokens=tokens,
            keys_t=to_image.project_heads(to_image.k_proj, tokens_pe, bias=False, transpose=True),
            values=to_image.project_heads(to_image.v_proj, tokens),
            queries_t=to_tokens.project_heads(to_tokens.q_proj, tokens_pe, transpose=True),
        )

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        projections: ImageProjections | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Parameters
        ----------
        image_tokens
            (B or 1, h * w, C) image embedding (plus dense prompt embedding), row-major over
            (h, w), channels last. Ignored when ``projections`` are given.
        image_pe
            (1, h * w, C) positional encoding of the image grid, same layout.
        point_embedding
            (B, T, C) output tokens followed by the sparse prompt embeddings.
        projections
            :meth:`project_image` of the image tokens: the first block's image side, computed
            once per image instead of once per prompt.

        Returns
        -------
        queries
            (B, T, C) processed tokens.
        keys
            (B, h * w, C) processed image tokens.
        """
        keys = image_tokens if projections is None else projections.tokens
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries, keys, point_embedding, image_pe, projections if i == 0 else None
            )
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(
            queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys)
        )
        return queries, keys
