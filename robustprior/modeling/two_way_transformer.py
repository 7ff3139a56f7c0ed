"""SAM's two-way transformer run over many prompts of few images, with the image-only work shared.

``segment_anything``'s ``TwoWayTransformer`` takes one copy of the image embedding per prompt. With
P prompts on the same image and no mask prompt (the dense prompt embedding is then one learned
vector, the same for every prompt), the first block's image side does not depend on the prompt:
the keys and values the tokens attend to (``k_proj``/``v_proj`` of the image) and the queries of the
image-to-token attention (``q_proj`` of the image) are computed once per image here instead of once
per prompt. Everything after the first block's image-to-token attention depends on the prompt and
runs per prompt, as in SAM. Attention uses ``F.scaled_dot_product_attention`` (the same softmax of
``q k^T / sqrt(d)``). The weights are SAM's own modules: only the order of the work changes, so the
outputs equal SAM's up to float rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``B x N x C -> B x heads x N x C/heads``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's :class:`Attention` on already projected ``B x N x C_internal`` queries, keys and values."""
    heads = attention.num_heads
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    b, _, n, c = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, heads * c))


def attention(module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``module(q, k, v)`` (SAM's attention with its projections), computed with SDPA."""
    return _attend(module, module.q_proj(q), module.k_proj(k), module.v_proj(v))


def _self_attention(block: TwoWayAttentionBlock, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
    """The block's token self-attention and its norm (``P x N x C``)."""
    if block.skip_first_layer_pe:
        queries = attention(block.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + attention(block.self_attn, q, q, queries)
    return block.norm1(queries)


def _block(block: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
           key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One :class:`TwoWayAttentionBlock` (SAM's order of operations), per prompt."""
    queries = _self_attention(block, queries, query_pe)
    q, k = queries + query_pe, keys + key_pe
    queries = block.norm2(queries + attention(block.cross_attn_token_to_image, q, k, keys))
    queries = block.norm3(queries + block.mlp(queries))
    q = queries + query_pe
    keys = block.norm4(keys + attention(block.cross_attn_image_to_token, k, q, queries))
    return queries, keys


def per_prompt(shared: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """A ``U x ...`` per-image tensor as ``P x ...`` per prompt: a broadcast view for one image (no copy)."""
    if shared.shape[0] == 1:
        return shared.expand(image_index.shape[0], *shared.shape[1:])
    return shared.index_select(0, image_index)


def _first_block_shared(block: TwoWayAttentionBlock, queries: torch.Tensor, images: torch.Tensor,
                        image_index: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first block with its image-only projections computed once per image: ``images`` is
    ``U x HW x C`` (each image's keys), ``queries`` ``P x N x C``; returns per-prompt outputs."""
    queries = _self_attention(block, queries, query_pe)

    # tokens -> image: every prompt of an image attends to the same keys and values
    to_image = block.cross_attn_token_to_image
    image_keys, image_values = to_image.k_proj(images + key_pe), to_image.v_proj(images)  # U x HW x Ci
    token_queries = to_image.q_proj(queries + query_pe)  # P x N x Ci
    if images.shape[0] == 1:  # all prompts as one batch of P*N queries (softmax is per query: the same numbers)
        prompts, tokens, _ = token_queries.shape
        attended = _attend(to_image, token_queries.reshape(1, prompts * tokens, -1), image_keys, image_values)
        attended = attended.view(prompts, tokens, -1)
    else:
        attended = _attend(to_image, token_queries, image_keys.index_select(0, image_index),
                           image_values.index_select(0, image_index))
    queries = block.norm2(queries + attended)
    queries = block.norm3(queries + block.mlp(queries))

    # image -> tokens: the image's queries are shared, keys and values are each prompt's tokens
    to_token = block.cross_attn_image_to_token
    heads = to_token.num_heads
    image_queries = _heads(to_token.q_proj(images + key_pe), heads)  # U x heads x HW x c
    q = queries + query_pe
    token_keys, token_values = _heads(to_token.k_proj(q), heads), _heads(to_token.v_proj(queries), heads)
    scale = 1.0 / math.sqrt(image_queries.shape[-1])
    weights = (torch.matmul(per_prompt(image_queries, image_index), token_keys.transpose(-1, -2)) * scale).softmax(-1)
    out = torch.matmul(weights, token_values)  # P x heads x HW x c
    prompts, _, hw, c = out.shape
    attended = to_token.out_proj(out.transpose(1, 2).reshape(prompts, hw, heads * c))
    keys = block.norm4(per_prompt(images, image_index) + attended)
    return queries, keys


def run_two_way_transformer(
    transformer: TwoWayTransformer,
    image_embedding: torch.Tensor,
    image_index: torch.Tensor,
    dense: torch.Tensor,
    image_pe: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``transformer(image_embedding[image_index] + dense, image_pe, tokens)`` for P prompts.

    ``image_embedding``: ``B x C x h x w``; ``image_index``: ``P`` long; ``dense``: ``P x C x h x w``
    dense prompt embeddings; ``image_pe``: ``1 x C x h x w``; ``tokens``: ``P x N x C``. Returns the
    processed tokens ``P x N x C`` and image tokens ``P x hw x C``, as SAM's transformer does. When
    every prompt's dense embedding is the same vector (no mask prompts: ``dense`` is one broadcast
    vector), the first block's image-only work is done once per image (module docstring)."""
    key_pe = image_pe.flatten(2).transpose(1, 2)  # 1 x hw x C
    shared = dense.dim() == 4 and dense.stride(0) == 0 and dense.stride(2) == 0 and dense.stride(3) == 0
    if shared and len(transformer.layers):
        images = (image_embedding + dense[:1]).flatten(2).transpose(1, 2)  # B x hw x C
        queries, keys = _first_block_shared(transformer.layers[0], tokens, images, image_index, tokens, key_pe)
        remaining = transformer.layers[1:]
    else:
        source = image_embedding.index_select(0, image_index) + dense
        queries, keys = tokens, source.flatten(2).transpose(1, 2)
        remaining = transformer.layers
    for block in remaining:
        queries, keys = _block(block, queries, keys, tokens, key_pe)
    q, k = queries + tokens, keys + key_pe
    queries = transformer.norm_final_attn(queries + attention(transformer.final_attn_token_to_image, q, k, keys))
    return queries, keys
