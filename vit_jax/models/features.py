"""Intermediate features of every family, as timm's `forward_intermediates`: one generic
mechanism over the family contract (`Family.feature_modules`, `num_prefix_tokens`,
`feature_norm`), no per-family code.

    pooled, maps = vit_jax.features(model, variables, images, layers=4, norm=True)
    # pooled [batch, features] (the pre-logits); maps: list of [batch, h, w, channels]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import tree
from vit_jax.errors import ModelError


def features(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
             layers: int | Sequence[int] | None = None, norm: bool = False,
             ) -> tuple[jax.Array, list[jax.Array]]:
    """The pooled pre-logits `[batch, features]` and the feature maps `[batch, h, w, channels]`
    of `layers` (eval mode).

    Maps are taken per block (ViT, DHVT, SReT) or per stage (Swin, ConvNeXt, ResNet), with
    prefix tokens split off; `layers` picks them as timm's `indices`: None all, an int the last
    that many, a sequence those indices (negative from the end). `norm=True` applies the
    family's final norm to the maps of its width (every block of a ViT, the last Swin stage),
    as timm does.
    """
    backbone = model.clone(num_classes=0)
    pattern = re.compile(model.feature_modules)

    def take(module: nn.Module, method: str) -> bool:
        return method == '__call__' and bool(pattern.fullmatch('/'.join(module.path)))

    pooled, state = backbone.apply(variables, images, train=False, capture_intermediates=take,
                                   mutable=['intermediates'])
    outputs = []
    for key, values in tree.flatten(state['intermediates']).items():
        stacked = tree.find_stacked(key, model.stacked_layers)  # [layers, ...]
        for value in values:  # a module called several times captures each call
            outputs.extend(list(value) if stacked else [value])
    picked = [outputs[i] for i in _indices(len(outputs), layers)]
    if norm and model.feature_norm:
        picked = _normed(backbone, variables, images, picked)
    return pooled, [_as_map(x, model.num_prefix_tokens, images.shape) for x in picked]


def _indices(count: int, layers: int | Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(count))
    if isinstance(layers, int):
        if not 0 < layers <= count:
            raise ModelError(f'layers={layers} but the model has {count} feature layers; '
                             f'ask for 1 to {count}')
        return list(range(count - layers, count))
    bad = [i for i in layers if not -count <= i < count]
    if bad:
        raise ModelError(f'layers {bad} out of range: the model has {count} feature layers '
                         f'(indices {-count} to {count - 1})')
    return [i % count for i in layers]


def _normed(backbone: nn.Module, variables: Mapping[str, Any], images: jax.Array,
            maps: list[jax.Array]) -> list[jax.Array]:
    """`maps` with the final norm (a per-position norm over the last axis, a LayerNorm) applied
    to those of its width: when the forward pass reaches the norm, it is called once on its own
    input with those maps' rows appended, and the rows are split off again."""
    out = []

    def intercept(next_fun, args, kwargs, context):
        if (context.method_name != '__call__' or out
                or '/'.join(context.module.path) != backbone.feature_norm):
            return next_fun(*args, **kwargs)
        x, width = args[0], args[0].shape[-1]
        rows = [m.reshape(-1, width) for m in maps if m.shape[-1] == width]
        normed = next_fun(jnp.concatenate([x.reshape(-1, width), *rows]), *args[1:], **kwargs)
        normed = iter(jnp.split(normed, np.cumsum([x.size // width] + [len(r) for r in rows])))
        y = next(normed).reshape(x.shape)
        out.extend(next(normed).reshape(m.shape) if m.shape[-1] == width else m for m in maps)
        return y

    with nn.intercept_methods(intercept):
        backbone.apply(variables, images, train=False)
    return out


def _as_map(x: jax.Array, prefix: int, image_shape: tuple[int, ...]) -> jax.Array:
    """A token sequence `[batch, prefix + h * w, c]` -> `[batch, h, w, c]` (the grid's aspect
    is the images'); maps pass through."""
    if x.ndim == 4:
        return x
    batch, tokens, channels = x.shape
    n = tokens - prefix
    h = round(math.sqrt(n * image_shape[1] / image_shape[2]))
    return x[:, prefix:].reshape(batch, h, n // h, channels)
