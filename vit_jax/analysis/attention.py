"""Attention weights, mean attention distance (Dosovitskiy et al., 2021, fig. 7 right) and
attention rollout (Abnar & Zuidema, 2020).

Token layout: `num_prefix_tokens` non-patch tokens (the class token) come first, then the
`grid[0] * grid[1]` patches in row-major order, as in `vit_jax.models.vit`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.errors import ModelError
from vit_jax.tree import layer_axes


def token_layout(model: nn.Module) -> tuple[tuple[int, int], int, int]:
    """`(grid, patch_size, num_prefix_tokens)` of a ViT-like model: the patch grid `(rows, cols)`,
    the patch stride in pixels and the number of tokens before the patches."""
    for name in ('grid', 'patch_size'):
        if not hasattr(model, name):
            raise ModelError(f'{type(model).__name__} has no {name!r}; the attention analyses '
                             f'need a model with global attention over a patch grid (e.g. ViT)')
    prefix = 1 if getattr(model, 'classifier', 'token') == 'token' else 0
    return tuple(model.grid), model.patch_size, prefix


def attention_weights(model: nn.Module, variables: Mapping[str, Any],
                      images: jax.Array) -> list[jax.Array]:
    """Softmax attention weights of every block, in order: each `[batch, heads, tokens, tokens]`.

    `images`: `[batch, height, width, channels]`, normalised as the model expects. The model is
    run with `attn_impl='explicit'`, which stores the weights in the 'intermediates' collection
    (stacked `[layers, ...]` by a model scanned over its layers, split here).
    """
    explicit = model.clone(attn_impl='explicit') if hasattr(model, 'attn_impl') else model
    _, state = explicit.apply(variables, images, train=False, mutable=['intermediates'])
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.get('intermediates', {})))
    found = sorted((path for path in flat if path[-1] == 'attention_weights'),
                   key=lambda path: [_natural(part) for part in path])
    if not found:
        raise ModelError(f'{type(model).__name__} stored no attention weights; it needs '
                         f'layers.MultiHeadAttention (attn_impl="explicit")')
    return [layer for path in found for layer in (
        flat[path][0] if layer_axes('/'.join(path)) else [flat[path][0]])]


def _natural(part: str) -> list[Any]:
    """'encoderblock_10' sorts after 'encoderblock_9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', part)]


def patch_distances(grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """Euclidean distance in pixels between the centres of every two patches `[n, n]`,
    `n = grid[0] * grid[1]`."""
    rows, cols = np.mgrid[:grid[0], :grid[1]]
    centres = np.stack([rows.ravel(), cols.ravel()], axis=1) * patch_size
    return np.linalg.norm(centres[:, None] - centres[None], axis=-1)


def mean_attention_distance(weights: Sequence[jax.Array], grid: tuple[int, int],
                            patch_size: int, num_prefix_tokens: int = 0) -> np.ndarray:
    """Mean attention distance in pixels per layer and head `[layers, heads]`.

    For each patch query, the distance to every patch key weighted by its attention (renormalised
    over the patch keys), averaged over the queries and the batch: the ViT paper's "attention
    distance", its analogue of a CNN's receptive field size.
    """
    stacked = jnp.stack([jnp.asarray(w, jnp.float32) for w in weights])  # [L, b, h, t, t]
    p = num_prefix_tokens
    _check_tokens(stacked.shape[-1], grid, p)
    patches = stacked[..., p:, p:]
    patches = patches / patches.sum(-1, keepdims=True)
    per_query = (patches * patch_distances(grid, patch_size)).sum(-1)  # [L, b, h, q]
    return np.asarray(per_query.mean(axis=(1, 3)))


def rollout(weights: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
    """Attention rollout `[batch, tokens, tokens]`: how much each output token draws on each
    input token through all blocks.

    Each block's weights are averaged over heads, mixed with the identity for the residual
    connection (`residual * I + (1 - residual) * A`), renormalised, and multiplied in order.
    """
    result = None
    for w in weights:
        a = jnp.asarray(w, jnp.float32).mean(axis=1)
        a = residual * jnp.eye(a.shape[-1]) + (1.0 - residual) * a
        a = a / a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    return result


def attention_maps(weights: Sequence[jax.Array], grid: tuple[int, int],
                   num_prefix_tokens: int = 0) -> dict[str, np.ndarray]:
    """What the model's output looks at, as maps over the patch grid, each scaled to max 1.

    Returns `{'rollout': [batch, rows, cols], 'last_layer': [batch, heads, rows, cols]}`: the
    attention rollout and the last block's attention per head, read from the class token (or,
    without one, averaged over the patch queries as global average pooling does).
    """
    p = num_prefix_tokens
    _check_tokens(weights[-1].shape[-1], grid, p)

    def from_output(a: jax.Array) -> jax.Array:  # [..., tokens, tokens] -> [..., patches]
        return a[..., 0, p:] if p else a[..., p:, p:].mean(axis=-2)

    maps = {'rollout': from_output(rollout(weights)),
            'last_layer': from_output(jnp.asarray(weights[-1], jnp.float32))}
    out = {}
    for name, m in maps.items():
        m = np.asarray(m).reshape(m.shape[:-1] + tuple(grid))
        out[name] = m / m.max(axis=(-2, -1), keepdims=True)
    return out


def _check_tokens(tokens: int, grid: tuple[int, int], prefix: int) -> None:
    if tokens != prefix + grid[0] * grid[1]:
        raise ModelError(f'attention over {tokens} tokens does not match {prefix} prefix tokens '
                         f'+ a {grid[0]}x{grid[1]} patch grid; these analyses need global '
                         f'attention over all patches')
