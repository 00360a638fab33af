"""Array names and stacked layers: how every part of vit_jax names the arrays of a variable tree.

An array is named by its '/'-joined path starting with the collection:
`params/Transformer/encoder_norm/scale`, `batch_stats/stem/bn1/mean`, or inside a train state
`opt_state/0/mu/Transformer/...`. A model scanned over its layers (`nn.scan`) keeps `[layers,
...]` arrays under a stacked module path (`Transformer/encoderblock`) in place of one module per
layer (`Transformer/encoderblock_{i}`); `STACKED_LAYERS` lists every such path a family declares
(`Family.stacked_layers`, checked by tests/test_families.py), so that a name alone tells
whether an array is stacked. Depends on nothing else in vit_jax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

# Module paths under which a model scanned over its layers stacks them (big_vision's ViT name).
STACKED_LAYERS: tuple[str, ...] = ('Transformer/encoderblock',)


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
    """`{'params': {'a': {'b': x}}}` -> `{'params/a/b': x}`."""
    return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(variables)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{'params/a/b': x}` -> `{'params': {'a': {'b': x}}}` (the inverse of `flatten`)."""
    return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def array_name(path: tuple) -> str:
    """A pytree path (of `jax.tree_util.tree_map_with_path`) as `params/Transformer/...`."""
    parts = []
    for key in path:
        for attr in ('key', 'name', 'idx'):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return '/'.join(parts)


def _split_key(key: str, path: str) -> tuple[str, str] | None:
    """`a/{path}/rest` -> `('a/', 'rest')`; None unless `path` is whole path components."""
    head, sep, rest = key.partition(path + '/')
    return (head, rest) if sep and (not head or head.endswith('/')) else None


def find_stacked(name: str, stacked: Sequence[str] = STACKED_LAYERS
                 ) -> tuple[str, str, str] | None:
    """`(path, head, rest)` for the first of the `stacked` paths that array `name` lies under
    (`head` + `path` + '/' + `rest` == `name`), else None."""
    return next(((path, *split) for path in stacked if (split := _split_key(name, path))), None)


def layer_axes(name: str, stacked: Sequence[str] = STACKED_LAYERS) -> int:
    """1 if array `name` (`params/Transformer/encoderblock/MlpBlock_3/Dense_0/kernel`, or its
    optimizer state `opt_state/0/mu/Transformer/encoderblock/...`) has a leading layer axis,
    else 0. Per-layer rules (weight decay, sharding) look at the array's other axes."""
    return int(find_stacked(name, stacked) is not None)


def unstack_layers(flat: Mapping[str, Any], stacked: Sequence[str] = STACKED_LAYERS) -> dict:
    """`.../{path}/rest` `[layers, ...]` -> `.../{path}_{i}/rest` for each layer `i`, for each of
    the `stacked` paths. Shapes (`jax.ShapeDtypeStruct`) split too."""
    out = {}
    for key, value in flat.items():
        split = find_stacked(key, stacked)
        if split is None:
            out[key] = value
            continue
        path, head, rest = split
        for i in range(value.shape[0]):
            layer = jax.ShapeDtypeStruct(value.shape[1:], value.dtype) if isinstance(
                value, jax.ShapeDtypeStruct) else value[i]
            out[f'{head}{path}_{i}/{rest}'] = layer
    return out


def stack_layers(flat: Mapping[str, Any], like: Mapping[str, Any],
                 stacked: Sequence[str] = STACKED_LAYERS) -> dict:
    """The inverse of `unstack_layers` for the stacked names of `like` (a model's flat
    variables): each `.../{path}/rest` is `np.stack` of `.../{path}_{i}/rest` over its `i`."""
    out = dict(flat)
    for key, value in like.items():
        split = find_stacked(key, stacked)
        if split is not None:
            path, head, rest = split
            names = [f'{head}{path}_{i}/{rest}' for i in range(value.shape[0])]
            if all(n in out for n in names):
                out[key] = np.stack([out.pop(n) for n in names])
    return out
