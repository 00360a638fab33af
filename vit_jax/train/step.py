"""Pure training and evaluation steps. No side effects: the loop jits and calls them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from vit_jax.data.device import model_inputs
from vit_jax.errors import ModelError
from vit_jax.train.objectives import Classification, Objective

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# Folded into each step's key for the mixup / cutmix draw (the other streams use small ids).
MIX_STREAM = 0x6D6978


@struct.dataclass
class TrainState:
    """Everything a resumed run needs: step, parameters, optimizer state, mutable model state
    (e.g. `{'batch_stats': ...}` for BatchNorm models, `{}` for ViT), the base RNG key and the
    exponential moving average of the weights (`ema`: `{'params': ..., **model_state}`, the
    variables of the averaged model; `{}` when `ema_decay` is 0, so such checkpoints hold
    nothing more than before)."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict[str, Any]
    rng: jax.Array
    ema: dict[str, Any] = struct.field(default_factory=dict)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], ema: bool = False,
                       head_bias: float | None = None) -> TrainState:
    """Initialises the model on zeros of `image_shape` `[batch, height, width, channels]`; with
    `ema`, the moving average starts as a copy of the initial variables; `head_bias` (e.g.
    `HEAD_BIAS_INIT[loss]`) sets the head's bias, else it keeps the model's initialisation."""
    init_rng, rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables.pop('params')
    if head_bias is not None:
        params = set_head_bias(params, model, head_bias)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=dict(variables), rng=rng,
                      ema=ema_start(params, variables) if ema else {})


def ema_start(params: Any, model_state: dict[str, Any]) -> dict[str, Any]:
    """The moving average's first value: a copy of `{'params': params, **model_state}`."""
    return jax.tree.map(jnp.copy, {'params': params, **model_state})


def ema_update(average: Any, variables: Any, decay: float) -> Any:
    """`decay * average + (1 - decay) * variables`, leaf by leaf, as timm's `ModelEmaV2.update`
    over the whole state (parameters and BatchNorm statistics); integer leaves (counters) take
    the new value."""

    def update(a, v):
        if not jnp.issubdtype(v.dtype, jnp.floating):
            return v
        return (decay * a + (1.0 - decay) * v).astype(v.dtype)

    return jax.tree.map(update, average, variables)


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Per-example softmax cross-entropy `[batch]`; `targets` are class ids `[batch]` or class
    probabilities `[batch, classes]` (e.g. the soft targets of mixup)."""
    return optax.softmax_cross_entropy(logits, _soft_targets(logits, targets, label_smoothing))


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
                          ) -> jax.Array:
    """Per-example sigmoid cross-entropy `[batch]`, summed over the classes as big_vision's
    `sigmoid_xent`: each class is an independent binary target; `targets` as `cross_entropy`."""
    targets = _soft_targets(logits, targets, label_smoothing)
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)


def _soft_targets(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Class ids `[batch]` or probabilities `[batch, classes]` -> smoothed probabilities."""
    if targets.ndim < logits.ndim:
        targets = jax.nn.one_hot(targets, logits.shape[-1])
    return optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets


# `--config.loss`: per-example losses `(logits, targets, label_smoothing) -> [batch]`.
LOSSES: dict[str, Callable[..., jax.Array]] = {'softmax_xent': cross_entropy,
                                               'sigmoid_xent': sigmoid_cross_entropy}
# The head's initial bias under a loss that sets one: big_vision's -10 for sigmoid (every class
# starts near probability 0, so the first steps are not spent pushing the other classes down).
HEAD_BIAS_INIT = {'sigmoid_xent': -10.0}


def set_head_bias(params: Any, model: nn.Module, value: float) -> Any:
    """`params` with the bias of each of the model's heads (`model.head_names`) set to
    `value`."""
    params = dict(params)
    for head in model.head_names:
        if head in params and 'bias' in params[head]:
            params[head] = {**params[head], 'bias': jnp.full_like(params[head]['bias'], value)}
    return params


def rng_streams(model: nn.Module, rng: jax.Array) -> dict[str, jax.Array]:
    """One key per RNG stream the model uses in training: 'dropout' (`rng` itself), plus any
    other stream the model's family declares in `rng_streams` (e.g. SReT's 'permute')."""
    names = model.rng_streams
    return {'dropout': rng, **{name: jax.random.fold_in(rng, i) for i, name in enumerate(names)
                              if name != 'dropout'}}


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How `make_train_step` trains: `accum_steps` micro-batches per step, `label_smoothing` of
    the targets, `ema_decay` of the moving average of the weights (0 = none), `loss` one of
    `LOSSES`; uint8 images normalised as `normalize` (`pp.normalize`) and erased with
    probability `erase_prob` (see `vit_jax.data.device.model_inputs`)."""

    accum_steps: int = 1
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    loss: str = 'softmax_xent'
    normalize: str = 'minus_one_one'
    erase_prob: float = 0.0


# `mix_fn(rng, images, labels, num_classes, label_smoothing=...) -> (images, soft targets)`:
# `vit_jax.train.mix.mix` with its alphas and probabilities bound.
MixFn = Callable[..., tuple[jax.Array, jax.Array]]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    mix_fn: MixFn | None = None, options: StepOptions = StepOptions(),
                    objective: Objective | None = None,
                    grad_sharding: Any = None) -> Callable[..., tuple[TrainState, Metrics]]:
    """Returns `train_step(state, batch, extras=None) -> (state, metrics)`, minimising
    `objective` (see `vit_jax.train.objectives`; default `Classification()`; `extras` the
    variables of its `frozen` models).

    `batch`: `{'image': [batch, h, w, 3], 'label': [batch]}` (and `seed` [batch, 2] when
    erasing), uint8 pixels or float model inputs (`vit_jax.data.device.model_inputs`). With
    `options.accum_steps > 1` the batch is split into that many micro-batches whose gradients
    are averaged: the same update as the whole batch at a fraction of the activation memory
    (BatchNorm statistics aside).
    Micro-batch `i` takes rows `i, i + accum_steps, ...`, so each device keeps its own rows (no
    transfers). `grad_sharding` (the parameters' `NamedSharding`s, a tree like `state.params`)
    places the gradients and their running sum as the parameters: with FSDP each device keeps
    its slice of the sum, not all of it.

    With `mix_fn` each batch is mixed on device (mixup / CutMix, label smoothing folded into the
    soft targets), from a key of the step's own, so resumed runs mix identically. With
    accumulation each micro-batch is mixed on its own (its own draw, mixed with its own
    reverse). The training accuracy then compares the prediction with the dominant label (the
    largest soft target: the image's own label when `lam > 0.5`, the reversed batch's when
    `lam < 0.5`, the lower class id at a tie).

    With `options.ema_decay` > 0, `state.ema` (see `create_train_state(..., ema=True)`) is
    updated after each optimizer step: `ema = decay * ema + (1 - decay) * (params, model_state)`.
    `metrics['finite']` is 1 when the loss, every gradient and every updated parameter (and
    moving average) are finite.

    `Classification` learns the labels; `vit_jax.train.distill.Distillation` adds DeiT's
    frozen teacher.
    """
    accum_steps, label_smoothing, ema_decay = (options.accum_steps, options.label_smoothing,
                                               options.ema_decay)
    loss_of = LOSSES[options.loss]
    objective = objective or Classification()
    if mix_fn is not None and not model.num_classes:
        raise ModelError('mixup / cutmix need a model with a classification head '
                         '(num_classes > 0); set --config.mixup_alpha=0 --config.cutmix_alpha=0')

    def mixed_inputs(images, labels, rng):
        """(images, targets): mixed images and soft targets, or the batch as it is."""
        if mix_fn is None:
            return images, labels
        return mix_fn(jax.random.fold_in(rng, MIX_STREAM), images, labels, model.num_classes,
                      label_smoothing=label_smoothing)

    def loss_fn(params, model_state, images, labels, rng, extras):
        images, targets = mixed_inputs(images, labels, rng)
        variables = {'params': params, **model_state}
        outputs, new_state = model.apply(variables, images, train=True,
                                         rngs=rng_streams(model, rng), mutable=list(model_state))
        mixing = mix_fn is not None
        smoothing = 0.0 if mixing else label_smoothing
        loss, logits = objective(outputs, images, extras,
                                 lambda logits: loss_of(logits, targets, smoothing))
        dominant = targets.argmax(-1) if mixing else targets
        correct = (logits.argmax(-1) == dominant).mean()
        return loss.mean(), (correct, new_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def images(batch: Batch) -> jax.Array:
        # Per micro-batch: a whole batch of float images would outweigh the activations.
        return model_inputs(batch, options.normalize, options.erase_prob)

    def place(grads: Any) -> Any:
        if grad_sharding is None:
            return grads
        return jax.lax.with_sharding_constraint(grads, grad_sharding)

    def train_step(state: TrainState, batch: Batch, extras: Mapping[str, Any] | None = None,
                   ) -> tuple[TrainState, Metrics]:
        extras = extras or {}
        rng = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            (loss, (accuracy, model_state)), grads = grad_fn(
                state.params, state.model_state, images(batch), batch['label'], rng, extras)
        else:
            micro = jax.tree.map(functools.partial(split_micro_batches, steps=accum_steps), batch)

            def accumulate(carry, inputs):
                grads, loss, accuracy, model_state = carry
                i, mb = inputs
                (mb_loss, (mb_accuracy, model_state)), mb_grads = grad_fn(
                    state.params, model_state, images(mb), mb['label'], jax.random.fold_in(rng, i),
                    extras)
                return (place(jax.tree.map(jnp.add, grads, place(mb_grads))), loss + mb_loss,
                        accuracy + mb_accuracy, model_state), None

            zeros = place(jax.tree.map(jnp.zeros_like, state.params))
            (grads, loss, accuracy, model_state), _ = jax.lax.scan(
                accumulate, (zeros, 0.0, 0.0, state.model_state),
                (jnp.arange(accum_steps), micro))
            grads = jax.tree.map(lambda g: g / accum_steps, grads)
            loss, accuracy = loss / accum_steps, accuracy / accum_steps
        grads = place(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema, {'params': params, **model_state}, ema_decay) \
            if ema_decay else state.ema
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state, ema=ema)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(
            optax.tree.norm(params)) & jnp.isfinite(optax.tree.norm(ema))
        return new_state, {'loss': loss, 'accuracy': accuracy, 'grad_norm': grad_norm,
                           'finite': finite.astype(jnp.int32)}

    return train_step


def split_micro_batches(x: jax.Array, steps: int) -> jax.Array:
    """`[batch, ...] -> [steps, batch / steps, ...]`, micro-batch `i` = rows `i::steps`."""
    micro = x.reshape((-1, steps) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(micro, (None, 'batch') + (None,) * (x.ndim - 1))


def make_eval_step(model: nn.Module, loss: str = 'softmax_xent',
                   normalize: str = 'minus_one_one') -> Callable[[TrainState, Batch], Metrics]:
    """Returns `eval_step(state, batch) -> sums` over the examples where `batch['mask']` is 1;
    uint8 images are normalised as `normalize` (`vit_jax.data.device.model_inputs`).

    Sums (not means) so that padded batches add up exactly: `{'correct', 'loss', 'count'}` (the
    `loss` of `LOSSES`), and `'ema_correct'`, `'ema_loss'` of the averaged weights when the
    state has them.
    """
    loss_of = LOSSES[loss]

    def sums(variables, batch, mask, prefix=''):
        logits = model.apply(variables, batch['image'], train=False)
        correct = (logits.argmax(-1) == batch['label']).astype(jnp.float32)
        return {f'{prefix}correct': (correct * mask).sum(),
                f'{prefix}loss': (loss_of(logits, batch['label']) * mask).sum()}

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        batch = {**batch, 'image': model_inputs(batch, normalize)}
        mask = batch['mask'].astype(jnp.float32)
        out = sums({'params': state.params, **state.model_state}, batch, mask)
        if state.ema:
            out.update(sums(state.ema, batch, mask, prefix='ema_'))
        return {**out, 'count': mask.sum()}

    return eval_step
