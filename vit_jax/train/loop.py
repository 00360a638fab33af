"""The training loop: the one place with side effects (data, logging, progress, checkpoints)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from vit_jax import config as config_lib
from vit_jax import models, weights
from vit_jax.data.arrays import Datasets
from vit_jax.errors import TrainingError
from vit_jax.train import sharding
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.metrics import MetricWriter, Progress
from vit_jax.train.optim import create_optimizer, learning_rate_schedule
from vit_jax.train.preemption import PreemptionWatch
from vit_jax.train.step import TrainState, create_train_state, make_eval_step, make_train_step


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable[dict],
             batch_sharding: jax.sharding.NamedSharding) -> dict[str, float]:
    """Accuracy and loss over every example of `batches` (padded ones masked out), and
    `ema_accuracy`, `ema_loss` of the moving average of the weights when the state has one."""
    totals = None
    for batch in batches:
        sums = eval_step(state, sharding.to_global(batch, batch_sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    result = {'accuracy': float(totals['correct']) / count,
              'loss': float(totals['loss']) / count, 'count': int(count)}
    if 'ema_correct' in totals:
        result.update(ema_accuracy=float(totals['ema_correct']) / count,
                      ema_loss=float(totals['ema_loss']) / count)
    return result


def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The mesh of `config.mesh`, after checking that the batches split over it."""
    sharding.check_rules(config.param_sharding)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size('batch', config.batch, mesh.size, config.accum_steps)
    sharding.check_batch_size('batch_eval', config.batch_eval, mesh.size)
    return mesh


def _compile(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
             ) -> tuple[TrainState, Callable, Callable]:
    """The initial state and the jitted train and eval steps, placed on `mesh`."""
    tx = create_optimizer(config)
    init = functools.partial(create_train_state, model, tx,
                             image_shape=(1, config.pp.crop, config.pp.crop, model.in_chans),
                             ema=config.ema_decay > 0)
    rng = jax.random.PRNGKey(config.seed)
    state_sharding = sharding.state_shardings(jax.eval_shape(init, rng), mesh,
                                              config.param_sharding, config.fsdp_min_size)
    data_sharding = sharding.batch_sharding(mesh)
    state = jax.jit(init, out_shardings=state_sharding)(rng)
    train_step = jax.jit(
        sharding.on_mesh(make_train_step(
            model, tx, accum_steps=config.accum_steps, label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
            mix_prob=config.mix_prob, mix_switch_prob=config.mix_switch_prob,
            ema_decay=config.ema_decay), mesh),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    eval_step = jax.jit(sharding.on_mesh(make_eval_step(model), mesh),
                        in_shardings=(state_sharding, data_sharding),
                        out_shardings=sharding.replicated(mesh))
    return state, train_step, eval_step


def _load_pretrained(state: TrainState, model: nn.Module, path: str) -> TrainState:
    """`state` with parameters (and BatchNorm statistics) from the weights file `path`, placed
    as the state's own arrays are; the head starts afresh, as in the original fine-tuning. The
    moving average of the weights, if any, starts from them too."""
    variables = weights.load(model, path, reset_head=True)
    params = variables.pop('params')

    def place(value, like):
        return jax.make_array_from_callback(like.shape, like.sharding, lambda i: value[i])

    state = state.replace(params=jax.tree.map(place, params, state.params),
                          model_state=jax.tree.map(place, variables, state.model_state))
    if state.ema:
        state = state.replace(ema=jax.tree.map(place, {'params': params, **variables},
                                               state.ema))
    return state


def _ema_text(result: dict[str, float]) -> str:
    """`' (EMA weights: accuracy A, loss L)'` when `result` has them, else ''."""
    if 'ema_accuracy' not in result:
        return ''
    return f' (EMA weights: accuracy {result["ema_accuracy"]:.4f}, loss {result["ema_loss"]:.4f})'


def _check_finite(metrics: dict[str, jax.Array], step: int, checkpointer: Checkpointer) -> None:
    """Stops the run at a non-finite loss or gradient; the saved checkpoints are all older."""
    if not int(metrics['finite']):
        kept = checkpointer.all_steps()
        raise TrainingError(
            f'non-finite loss ({float(metrics["loss"])}) or gradient norm '
            f'({float(metrics["grad_norm"])}) at step {step}; lower --config.base_lr, set '
            f'--config.grad_norm_clip, or check the data for NaN/inf. The last good checkpoint '
            f'(step {kept[-1] if kept else "none"}) is kept in {checkpointer.directory}.')


def train(config: ml_collections.ConfigDict, workdir: str, *,
          datasets: Callable[[ml_collections.ConfigDict, int], Datasets] | None = None,
          ) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final eval
    (with `preempted_at_step` when SIGTERM stopped the run after saving a checkpoint).

    Writes `weights.npz` (the trained weights) and, with `config.ema_decay` > 0,
    `weights_ema.npz` (their moving average, also evaluated: `ema_accuracy`, `ema_loss`).

    `datasets(config, start)` returns `(train_iterator, make_eval_iterator, info)` with the
    train stream starting after `start` examples; the default is `vit_jax.data.create_datasets`
    (TensorFlow), `vit_jax.data.arrays.array_datasets` serves numpy arrays.
    """
    config_lib.validate(config)
    mesh = _make_mesh(config)
    if datasets is None:
        from vit_jax import data  # the input pipeline imports TensorFlow: only when used
        datasets = data.create_datasets
    checkpointer = Checkpointer(workdir, every=config.checkpoint_every,
                                keep=config.keep_checkpoints)
    resume = checkpointer.latest_run()
    examples_seen = resume['examples_seen'] if resume else 0
    train_iter, make_eval_iter, info = datasets(config, examples_seen)
    model = models.create_model(config.model_name, **config_lib.model_overrides(config),
                                num_classes=info.num_classes, img_size=config.pp.crop)

    schedule = learning_rate_schedule(config)
    data_sharding = sharding.batch_sharding(mesh)
    state, train_step, eval_step = _compile(config, model, mesh)

    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=is_main)
    progress = Progress(config.total_steps, config.batch,
                        stream=None if is_main else open(os.devnull, 'w'))
    if is_main:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            f.write(config.to_json_best_effort(indent=2))
        with open(os.path.join(workdir, 'classes.txt'), 'w') as f:  # for vit_jax.predict
            f.write(''.join(f'{name}\n' for name in info.class_names))
    if resume is not None:
        state, run = checkpointer.restore(state, config.model_name)
        if run['examples_seen'] != examples_seen:  # fell back to an older checkpoint
            examples_seen = run['examples_seen']
            train_iter = datasets(config, examples_seen)[0]
        progress.print(f'Resumed from {checkpointer.directory} at step {int(state.step)} '
                       f'({examples_seen:,} training examples read).')
    elif config.pretrained:
        state = _load_pretrained(state, model, config.pretrained)
        progress.print(f'Starting from the weights in {config.pretrained}.')
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    progress.print(f'{config.model_name}: {n_params:,} parameters; {info.num_train:,} train / '
                   f'{info.num_eval:,} eval examples of {info.name!r}, {info.num_classes} classes; '
                   f'mesh {dict(mesh.shape)} over {jax.process_count()} process(es).')

    first = int(state.step)
    final: dict[str, float] = {}
    previous = None
    start = time.perf_counter()
    preempted = False
    # Closing waits for the checkpoint being written, also when the run stops with an error.
    with PreemptionWatch() as preemption, contextlib.closing(checkpointer), \
            contextlib.closing(writer):
        for step in range(first + 1, config.total_steps + 1):
            batch = sharding.to_global(next(train_iter), data_sharding)
            state, metrics = train_step(state, batch)
            examples_seen += config.batch
            if previous is not None:  # a step behind, so the device never waits on the host
                _check_finite(previous, step - 1, checkpointer)
            previous = metrics
            if step == first + 1:
                jax.block_until_ready(metrics)
                progress.restart(step)
            run = {'model_name': config.model_name, 'step': step, 'examples_seen': examples_seen,
                   'batch': config.batch, 'process_count': jax.process_count()}
            preempted = preemption.requested(step)
            will_save = preempted or step == config.total_steps or (
                config.checkpoint_every and step % config.checkpoint_every == 0)
            if step % config.progress_every == 0 or will_save or (
                    config.eval_every and step % config.eval_every == 0):
                _check_finite(metrics, step, checkpointer)
            if step % config.progress_every == 0 or step == config.total_steps:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()
                           if k != 'finite'}
                scalars['learning_rate'] = float(schedule(step - 1))
                scalars['img_per_s'] = progress.update(step, {k: scalars[k] for k in ('loss',)})
                writer.write(step, {f'train_{k}': v for k, v in scalars.items()})
            if (config.eval_every and step % config.eval_every == 0) or step == config.total_steps:
                final = evaluate(eval_step, state, make_eval_iter(), data_sharding)
                progress.print(f'step {step}: eval accuracy {final["accuracy"]:.4f}, loss '
                               f'{final["loss"]:.4f}{_ema_text(final)} over {final["count"]} '
                               f'examples')
                writer.write(step, {f'eval_{k}': v for k, v in final.items()})
            checkpointer.maybe_save(step, state, run, force=preempted or step == config.total_steps)
            if preempted:
                break
    if preempted:
        progress.print(f'Preempted: saved step {step} in {checkpointer.directory}; run the '
                       f'same command to resume.')
        return {'preempted_at_step': step}
    if not final:  # resumed a finished run
        final = evaluate(eval_step, state, make_eval_iter(), data_sharding)
    # Every process takes part in gathering sharded arrays; process 0 writes them.
    variables = multihost_utils.process_allgather({'params': state.params, **state.model_state},
                                                  tiled=True)
    ema_variables = multihost_utils.process_allgather(state.ema, tiled=True) if state.ema else {}
    if is_main:
        final['train_seconds'] = time.perf_counter() - start
        progress.print(
            f'Done: eval accuracy {final["accuracy"]:.4f}{_ema_text(final)} on '
            f'{final["count"]} held-out examples '
            f'in {final["train_seconds"]:.0f}s. Checkpoints: {checkpointer.directory}; metrics: '
            f'{writer.path} (TensorBoard: {os.path.join(workdir, "tensorboard")}); weights in '
            f'the original .npz layout: {os.path.join(workdir, "weights.npz")}'
            f'{" (their moving average: weights_ema.npz)" if ema_variables else ""}.')
        with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
            json.dump(final, f, indent=2)
        weights.save_npz(variables, os.path.join(workdir, 'weights.npz'))
        if ema_variables:
            weights.save_npz(ema_variables, os.path.join(workdir, 'weights_ema.npz'))
    return final
