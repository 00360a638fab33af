"""Pure training and evaluation steps. No side effects: the loop jits and calls them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    """Everything a resumed run needs: step, parameters, optimizer state, mutable model state
    (e.g. `{'batch_stats': ...}` for BatchNorm models, `{}` for ViT) and the base RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict[str, Any]
    rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
    """Initialises the model on zeros of `image_shape` `[batch, height, width, channels]`."""
    init_rng, rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables.pop('params')
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=dict(variables), rng=rng)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy `[batch]`; `labels` are class ids `[batch]`."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, targets)


def rng_streams(model: nn.Module, rng: jax.Array) -> dict[str, jax.Array]:
    """One key per RNG stream the model uses in training: 'dropout' (`rng` itself), plus any
    other stream the model class lists in `rng_streams` (e.g. SReT's 'permute')."""
    names = getattr(model, 'rng_streams', ('dropout',))
    return {'dropout': rng, **{name: jax.random.fold_in(rng, i) for i, name in enumerate(names)
                              if name != 'dropout'}}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, accum_steps: int = 1,
                    label_smoothing: float = 0.0) -> Callable[[TrainState, Batch],
                                                              tuple[TrainState, Metrics]]:
    """Returns `train_step(state, batch) -> (state, metrics)`.

    `batch`: `{'image': [batch, h, w, 3], 'label': [batch]}`. With `accum_steps > 1` the batch
    is split into that many micro-batches whose gradients are averaged: the same update as the
    whole batch at a fraction of the activation memory (BatchNorm statistics aside). Micro-batch
    `i` takes rows `i, i + accum_steps, ...`, so each device keeps its own rows (no transfers).
    `metrics['finite']` is 1 when the loss and every gradient are finite.
    """

    def loss_fn(params, model_state, images, labels, rng):
        variables = {'params': params, **model_state}
        logits, new_state = model.apply(variables, images, train=True,
                                        rngs=rng_streams(model, rng), mutable=list(model_state))
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        correct = (logits.argmax(-1) == labels).mean()
        return loss, (correct, new_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            (loss, (accuracy, model_state)), grads = grad_fn(
                state.params, state.model_state, batch['image'], batch['label'], rng)
        else:
            micro = jax.tree.map(functools.partial(split_micro_batches, steps=accum_steps), batch)

            def accumulate(carry, inputs):
                grads, loss, accuracy, model_state = carry
                i, mb = inputs
                (mb_loss, (mb_accuracy, model_state)), mb_grads = grad_fn(
                    state.params, model_state, mb['image'], mb['label'], jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, grads, mb_grads), loss + mb_loss,
                        accuracy + mb_accuracy, model_state), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, loss, accuracy, model_state), _ = jax.lax.scan(
                accumulate, (zeros, 0.0, 0.0, state.model_state),
                (jnp.arange(accum_steps), micro))
            grads = jax.tree.map(lambda g: g / accum_steps, grads)
            loss, accuracy = loss / accum_steps, accuracy / accum_steps
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return new_state, {'loss': loss, 'accuracy': accuracy, 'grad_norm': grad_norm,
                           'finite': finite.astype(jnp.int32)}

    return train_step


def split_micro_batches(x: jax.Array, steps: int) -> jax.Array:
    """`[batch, ...] -> [steps, batch / steps, ...]`, micro-batch `i` = rows `i::steps`."""
    micro = x.reshape((-1, steps) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(micro, (None, 'batch') + (None,) * (x.ndim - 1))


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], Metrics]:
    """Returns `eval_step(state, batch) -> sums` over the examples where `batch['mask']` is 1.

    Sums (not means) so that padded batches add up exactly: `{'correct', 'loss', 'count'}`.
    """

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        logits = model.apply({'params': state.params, **state.model_state}, batch['image'],
                             train=False)
        mask = batch['mask'].astype(jnp.float32)
        correct = (logits.argmax(-1) == batch['label']).astype(jnp.float32)
        return {'correct': (correct * mask).sum(),
                'loss': (cross_entropy(logits, batch['label']) * mask).sum(),
                'count': mask.sum()}

    return eval_step
