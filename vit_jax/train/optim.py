"""Learning-rate schedules and optimizers: the original fine-tune recipe (SGD with momentum,
warm-up then cosine decay, global-norm clipping), AdamW, and layer-wise learning-rate decay."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import tree
from vit_jax.models import contract, registry


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from `warmup_lr` to `base_lr` over `warmup_steps`, then `decay_type`
    decay to `min_lr` at `total_steps` (timm's `warmup_lr` and `min_lr`)."""
    warmup = optax.linear_schedule(config.warmup_lr, config.base_lr, config.warmup_steps)
    decay_steps = config.total_steps - config.warmup_steps
    decay = {
        'cosine': optax.cosine_decay_schedule(config.base_lr, decay_steps,
                                              alpha=config.min_lr / (config.base_lr or 1)),
        'linear': optax.linear_schedule(config.base_lr, config.min_lr, decay_steps),
        'constant': optax.constant_schedule(config.base_lr),
    }[config.decay_type]
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def decay_mask(family: type[contract.Family]) -> Callable[[Any], Any]:
    """The weight-decay mask of `family`'s parameters: decay on matrices and kernels only, not
    on biases, norms, layer scales or the family's `no_weight_decay` (tokens, position
    embeddings, relative position bias tables; judged per layer for parameters stacked by a
    model scanned over its layers)."""

    def decay(path, p):
        name = tree.array_name(path)
        return p.ndim - tree.layer_axes(name) > 1 and not any(
            re.search(pattern, name) for pattern in family.no_weight_decay)

    return lambda params: jax.tree_util.tree_map_with_path(decay, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of `config` (clipping, then SGD with momentum or AdamW) and the learning-rate
    schedule it follows."""
    schedule = learning_rate_schedule(config)
    dtype = jnp.dtype(config.optim_dtype)
    family = registry.get_spec(config.model_name).module
    mask = decay_mask(family)
    if config.optimizer == 'sgd':
        opt = optax.sgd(schedule, momentum=config.momentum, accumulator_dtype=dtype)
        if config.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(config.weight_decay, mask), opt)
    else:
        opt = optax.adamw(schedule, b1=config.b1, b2=config.b2, mu_dtype=dtype,
                          weight_decay=config.weight_decay, mask=mask)
    if config.layer_decay < 1:
        opt = optax.chain(opt, scale_by_layer_decay(family, config.layer_decay))
    if config.grad_norm_clip:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip), opt)
    return opt, schedule


def scale_by_layer_decay(family: type[contract.Family], decay: float,
                         ) -> optax.GradientTransformation:
    """Layer-wise learning-rate decay (BEiT, MAE fine-tuning): the update of a parameter at depth
    `d` (`contract.layer_depths`: embedding 0, block i at i + 1, head L) is multiplied by
    `decay ** (L - d)`; stacked layers get one factor per layer. Stateless, so the optimizer
    state keeps the layout (and the sharding) of the optimizer it follows."""

    def scale(updates: Any, params: Any = None) -> Any:
        del params
        leaves = jax.tree_util.tree_leaves_with_path(updates)
        shapes = {tree.array_name(path): jax.ShapeDtypeStruct(u.shape, u.dtype)
                  for path, u in leaves}
        depths = contract.layer_depths(
            family, tree.unstack_layers(shapes, family.stacked_layers))
        deepest = max(depths.values())

        def factor(name: str, u: jax.Array) -> jax.Array:
            split = tree.find_stacked(name, family.stacked_layers)
            if split is None:
                return jnp.asarray(decay ** (deepest - depths[name]), u.dtype)
            path, head, rest = split
            per_layer = [decay ** (deepest - depths[f'{head}{path}_{i}/{rest}'])
                         for i in range(u.shape[0])]
            return jnp.asarray(per_layer, u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))

        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor(tree.array_name(path), u), updates)

    return optax.stateless(scale)
