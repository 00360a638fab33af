"""The training loop: the one place with side effects (data, logging, progress, checkpoints)."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax import config as config_lib
from vit_jax import models, weights
from vit_jax.errors import TrainingError
from vit_jax.train import sharding
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.metrics import MetricWriter, Progress
from vit_jax.train.optim import create_optimizer, learning_rate_schedule
from vit_jax.train.step import TrainState, create_train_state, make_eval_step, make_train_step


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable[dict],
             batch_sharding: jax.sharding.NamedSharding) -> dict[str, float]:
    """Accuracy and loss over every example of `batches` (padded ones masked out)."""
    totals = None
    for batch in batches:
        sums = eval_step(state, sharding.to_global(batch, batch_sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count,
            'count': int(count)}


def _compile(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
             ) -> tuple[TrainState, Callable, Callable]:
    """The initial state and the jitted train and eval steps, placed on `mesh`."""
    tx = create_optimizer(config)
    state_sharding = sharding.replicated(mesh)
    data_sharding = sharding.batch_sharding(mesh)
    init = functools.partial(create_train_state, model, tx,
                             image_shape=(1, config.pp.crop, config.pp.crop, 3))
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
    train_step = jax.jit(
        make_train_step(model, tx, accum_steps=config.accum_steps,
                        label_smoothing=config.label_smoothing),
        in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, None),
        donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(state_sharding, data_sharding))
    return state, train_step, eval_step


def _load_pretrained(state: TrainState, model: nn.Module, path: str,
                     mesh: jax.sharding.Mesh) -> TrainState:
    """`state` with parameters (and BatchNorm statistics) from the weights file `path`; the head
    starts afresh, as in the original fine-tuning recipe."""
    variables = jax.device_put(weights.load(model, path, reset_head=True),
                               sharding.replicated(mesh))
    params = variables.pop('params')
    return state.replace(params=params, model_state={**state.model_state, **variables})


def train(config: ml_collections.ConfigDict, workdir: str, *,
          datasets: tuple[Iterator[dict], Callable[[], Iterator[dict]], Any] | None = None,
          ) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final eval.

    `datasets` = `(train_iterator, make_eval_iterator, info)` replaces the input pipeline
    (the default reads `config.dataset` with `vit_jax.data`, which needs TensorFlow).
    """
    config_lib.validate(config)
    mesh = sharding.make_mesh()
    sharding.check_batch_size('batch', config.batch // config.accum_steps, mesh)
    sharding.check_batch_size('batch_eval', config.batch_eval, mesh)
    if datasets is None:
        from vit_jax import data  # the input pipeline imports TensorFlow: only when used
        datasets = data.create_datasets(config)
    train_iter, make_eval_iter, info = datasets
    model = models.create_model(config.model_name, **config_lib.model_overrides(config),
                                num_classes=info.num_classes, img_size=config.pp.crop)

    schedule = learning_rate_schedule(config)
    data_sharding = sharding.batch_sharding(mesh)
    state, train_step, eval_step = _compile(config, model, mesh)

    is_main = jax.process_index() == 0
    checkpointer = Checkpointer(workdir, every=config.checkpoint_every,
                                keep=config.keep_checkpoints)
    writer = MetricWriter(workdir, enabled=is_main)
    progress = Progress(config.total_steps, config.batch)
    if is_main:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            f.write(config.to_json_best_effort(indent=2))
        with open(os.path.join(workdir, 'classes.txt'), 'w') as f:  # for vit_jax.predict
            f.write(''.join(f'{name}\n' for name in info.class_names))
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        progress.print(f'Resumed from {checkpointer.directory} at step {int(state.step)}.')
    elif config.pretrained:
        state = _load_pretrained(state, model, config.pretrained, mesh)
        progress.print(f'Starting from the weights in {config.pretrained}.')
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    progress.print(f'{config.model_name}: {n_params:,} parameters; {info.num_train:,} train / '
                   f'{info.num_eval:,} eval examples of {info.name!r}, {info.num_classes} classes; '
                   f'{mesh.size} device(s).')

    first = int(state.step)
    final: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(first + 1, config.total_steps + 1):
        batch = sharding.to_global(next(train_iter), data_sharding)
        state, metrics = train_step(state, batch)
        if step == first + 1:
            jax.block_until_ready(metrics)
            progress.restart(step)
        if step % config.progress_every == 0 or step == config.total_steps:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(scalars['loss']):
                raise TrainingError(
                    f'loss is {scalars["loss"]} at step {step}; lower --config.base_lr or check '
                    f'the data. The last good checkpoint is kept in {checkpointer.directory}.')
            scalars['learning_rate'] = float(schedule(step - 1))
            scalars['img_per_s'] = progress.update(step, {k: scalars[k] for k in ('loss',)})
            writer.write(step, {f'train_{k}': v for k, v in scalars.items()})
        if (config.eval_every and step % config.eval_every == 0) or step == config.total_steps:
            final = evaluate(eval_step, state, make_eval_iter(), data_sharding)
            progress.print(f'step {step}: eval accuracy {final["accuracy"]:.4f}, loss '
                           f'{final["loss"]:.4f} over {final["count"]} examples')
            writer.write(step, {f'eval_{k}': v for k, v in final.items()})
        checkpointer.maybe_save(step, state, force=step == config.total_steps)
    checkpointer.close()
    writer.close()
    if not final:  # resumed a finished run
        final = evaluate(eval_step, state, make_eval_iter(), data_sharding)
    if is_main:
        final['train_seconds'] = time.perf_counter() - start
        progress.print(
            f'Done: eval accuracy {final["accuracy"]:.4f} on {final["count"]} held-out examples '
            f'in {final["train_seconds"]:.0f}s. Checkpoints: {checkpointer.directory}; metrics: '
            f'{writer.path} (TensorBoard: {os.path.join(workdir, "tensorboard")}); weights in '
            f'the original .npz layout: {os.path.join(workdir, "weights.npz")}.')
        with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
            json.dump(final, f, indent=2)
        weights.save_npz({'params': state.params, **state.model_state},
                         os.path.join(workdir, 'weights.npz'))
    return final
