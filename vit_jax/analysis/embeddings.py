"""Position-embedding similarity and patch-embedding filter components (Dosovitskiy et al.,
2021, fig. 7 left and centre)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from vit_jax.errors import ModelError
from vit_jax.models import layers


def position_embedding(model: nn.Module, params: Mapping[str, Any]) -> np.ndarray:
    """The position embedding of each patch `[rows * cols, dim]` (prefix tokens left out).

    Learned embeddings come from `params`; fixed sine-cosine ones are computed as the model does.
    """
    kind = getattr(model, 'pos_embed', 'learned')
    rows, cols = model.grid
    if kind == 'learned':
        pe = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])[0]
        return pe[len(pe) - rows * cols:]
    if kind == 'sincos2d':
        return layers.sincos_2d(rows, cols, model.embed_dim)[0]
    if kind == 'sincos1d':
        return layers.sincos_1d(rows * cols, model.embed_dim)[0]
    raise ModelError(f'this model has no position embedding (pos_embed={kind!r}); use a model '
                     f'with pos_embed "learned", "sincos2d" or "sincos1d"')


def position_similarity(embedding: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Cosine similarity of each patch's position embedding with every other's.

    `embedding`: `[rows * cols, dim]`. Returns `[rows, cols, rows, cols]`: entry `[i, j]` is the
    map of patch (i, j)'s similarity to all patches.
    """
    e = np.asarray(embedding, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return (e @ e.T).reshape(*grid, *grid).astype(np.float32)


def filter_components(kernel: np.ndarray, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the patch-embedding filters.

    `kernel`: the patch embedding `[k, k, channels, dim]` (`params['embedding']['kernel']`):
    `dim` filters of `k * k * channels` pixels. Returns the top `count` components
    `[count, k, k, channels]` (unit norm, sign chosen so the largest entry is positive) and
    the fraction of the filters' variance each explains `[count]`.
    """
    k1, k2, channels, dim = kernel.shape
    filters = np.asarray(kernel, np.float64).reshape(-1, dim).T  # [dim, k * k * channels]
    filters = filters - filters.mean(axis=0)
    _, singular, components = np.linalg.svd(filters, full_matrices=False)
    count = min(count, len(components))
    components = components[:count]
    signs = np.sign(components[np.arange(count), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    explained = singular ** 2 / np.sum(singular ** 2)
    return (components.reshape(count, k1, k2, channels).astype(np.float32),
            explained[:count].astype(np.float32))
