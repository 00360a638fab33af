"""What a run of a config computes with, built before any data or state exists: the mesh, the
model, the optimizer, the state's shardings and the jitted train and eval steps (`setup`). The
trainer, the run reader (`vit_jax.train.workdir`) and the TPU planner (`vit_jax.plan`) build it
alike."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from vit_jax import models
from vit_jax.models import contract
from vit_jax.train import config_keys, mix, objectives, sharding
from vit_jax.train.objectives import Objective
from vit_jax.train.optim import create_optimizer
from vit_jax.train.step import (
    HEAD_BIAS_INIT,
    MixFn,
    StepOptions,
    TrainState,
    create_train_state,
    make_eval_step,
    make_train_step,
)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run of a config computes with, built before any data or state exists.

    `abstract_state` is the `TrainState` as `jax.ShapeDtypeStruct`s carrying `state_sharding`;
    `init(rng)` allocates the initial state so placed. `train_step(state, batch, extras) ->
    (state, metrics)` (the state donated) and `eval_step(state, batch) -> sums` are jitted with
    the state, `batch_sharding` (the batch split over `data` x `fsdp`) and the extras as input
    shardings, so `train_step.lower(abstract_state, abstract_batch, abstract_extras).compile()`
    compiles it ahead of time.

    `objective` is what the step minimises (`objectives.Classification`, or DeiT's
    `distill.Distillation`); `extras` are the variables of its frozen models (a teacher), not
    part of the state, placed as `abstract_extras` says (the parameter sharding rules applied
    to their names) and read by `objective.load_extras(config, abstract_extras)`.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: jax.sharding.Mesh
    state_sharding: TrainState
    abstract_state: TrainState
    batch_sharding: jax.sharding.NamedSharding
    init: Callable[[jax.Array], TrainState]
    train_step: Callable[..., tuple[TrainState, dict]]
    eval_step: Callable[[TrainState, dict], dict]
    objective: Objective
    abstract_extras: dict[str, Any]


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The mesh of `config.mesh` over `devices` (default: every device of every process)."""
    return sharding.make_mesh(config.mesh, devices)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The model `config` trains: its `model_name` with the options of `config.model`, a head of
    `num_classes` and an input of `config.pp.crop` pixels."""
    return models.create_model(config.model_name, **config_keys.model_overrides(config),
                               num_classes=num_classes, img_size=config.pp.crop)


def setup(config: ml_collections.ConfigDict, num_classes: int, mesh: jax.sharding.Mesh,
          ) -> Setup:
    """The model, optimizer, shardings and jitted steps of `config` on `mesh` (any devices,
    abstract TPU ones included), after checking that the batches split over it. Reads no data
    and allocates no state."""
    devices = sharding.batch_devices(mesh)
    sharding.check_batch_size('batch', config.batch, devices, config.accum_steps)
    sharding.check_batch_size('batch_eval', config.batch_eval, devices)
    model = build_model(config, num_classes)
    tx, schedule = create_optimizer(config)
    init = functools.partial(create_train_state, model, tx,
                             image_shape=(1, config.pp.crop, config.pp.crop, model.in_chans),
                             ema=config.ema_decay > 0,
                             head_bias=HEAD_BIAS_INIT.get(config.loss))
    shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    state_sharding = sharding.state_shardings(shapes, mesh, config.param_sharding,
                                              config.fsdp_min_size, type(model))
    abstract_state = jax.tree.map(
        lambda s, placed: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placed),
        shapes, state_sharding)
    batch_sharding = sharding.batch_sharding(mesh)
    options = StepOptions(accum_steps=config.accum_steps, label_smoothing=config.label_smoothing,
                          ema_decay=config.ema_decay, loss=config.loss,
                          normalize=config.pp.normalize, erase_prob=config.pp.erase_prob)
    objective = objectives.from_config(config, num_classes)
    abstract_extras = {name: abstract_variables(frozen, mesh, config)
                       for name, frozen in objective.frozen.items()}
    train_step = jax.jit(
        sharding.on_mesh(make_train_step(model, tx, _mixing(config), options, objective,
                                        state_sharding.params),
                         mesh),
        in_shardings=(state_sharding, batch_sharding,
                      jax.tree.map(lambda s: s.sharding, abstract_extras)),
        out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    eval_step = jax.jit(
        sharding.on_mesh(make_eval_step(model, config.loss, config.pp.normalize), mesh),
        in_shardings=(state_sharding, batch_sharding), out_shardings=sharding.replicated(mesh))
    return Setup(model=model, tx=tx, schedule=schedule, mesh=mesh,
                 state_sharding=state_sharding, abstract_state=abstract_state,
                 batch_sharding=batch_sharding,
                 init=jax.jit(init, out_shardings=state_sharding),
                 train_step=train_step, eval_step=eval_step, objective=objective,
                 abstract_extras=abstract_extras)


def abstract_variables(model: nn.Module, mesh: jax.sharding.Mesh,
                        config: ml_collections.ConfigDict) -> Any:
    """`model`'s variables as `jax.ShapeDtypeStruct`s placed by `config.param_sharding` on
    `mesh`, as a run's parameters are (a teacher's, or those of a run read back)."""
    shapes = jax.eval_shape(functools.partial(contract.init, model), jax.random.PRNGKey(0))
    placement = sharding.state_shardings(dict(shapes), mesh, config.param_sharding,
                                         config.fsdp_min_size, type(model))
    return jax.tree.map(lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p),
                        dict(shapes), placement)


def _mixing(config: ml_collections.ConfigDict) -> MixFn | None:
    """`mix.mix` with the config's alphas and probabilities, or None when both alphas are 0."""
    if config.mixup_alpha <= 0 and config.cutmix_alpha <= 0:
        return None
    return functools.partial(mix.mix, mixup_alpha=config.mixup_alpha,
                             cutmix_alpha=config.cutmix_alpha, prob=config.mix_prob,
                             switch_prob=config.mix_switch_prob)
