"""Learning-rate schedules and optimizers: the original fine-tune recipe (SGD with momentum,
warm-up then cosine decay, global-norm clipping) and AdamW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import tree


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then `decay_type` decay to 0."""
    warmup = optax.linear_schedule(0.0, config.base_lr, config.warmup_steps)
    decay_steps = config.total_steps - config.warmup_steps
    decay = {
        'cosine': optax.cosine_decay_schedule(config.base_lr, decay_steps),
        'linear': optax.linear_schedule(config.base_lr, 0.0, decay_steps),
        'constant': optax.constant_schedule(config.base_lr),
    }[config.decay_type]
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


# Parameters with more than one axis that are no weights to decay (as timm's no_weight_decay).
NO_DECAY = ('pos_embedding', 'cls', 'relative_position_bias_table')


def _decay_mask(params):
    """Weight decay on matrices and kernels only: not on biases, norms, layer scales, tokens,
    position embeddings or relative position bias tables (judged per layer for parameters
    stacked by a model scanned over its layers)."""

    def decay(path, p):
        name = tree.array_name(path)
        return p.ndim - tree.layer_axes(name) > 1 and not any(n in name for n in NO_DECAY)

    return jax.tree_util.tree_map_with_path(decay, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of `config` (clipping, then SGD with momentum or AdamW) and the learning-rate
    schedule it follows."""
    schedule = learning_rate_schedule(config)
    dtype = jnp.dtype(config.optim_dtype)
    if config.optimizer == 'sgd':
        opt = optax.sgd(schedule, momentum=config.momentum, accumulator_dtype=dtype)
        if config.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(config.weight_decay, _decay_mask), opt)
    else:
        opt = optax.adamw(schedule, b1=config.b1, b2=config.b2, mu_dtype=dtype,
                          weight_decay=config.weight_decay, mask=_decay_mask)
    if config.grad_norm_clip:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip), opt)
    return opt, schedule
