"""The training run, in phases read top to bottom: set up (`vit_jax.train.setup`: mesh, model,
optimizer, jitted steps; no data, no state), restore or initialise (the resume point, before
any data is built), the loop, export. The one place with side effects (data, logging, progress,
checkpoints), all of them through the run's `vit_jax.train.workdir.Workdir`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils

from vit_jax import weights
from vit_jax.data import DatasetInfo
from vit_jax.data.arrays import Datasets
from vit_jax.errors import ConfigError, TrainingError
from vit_jax.train import config_keys, fewshot, sharding
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.lock import WorkdirLock
from vit_jax.train.metrics import MetricWriter, Progress
from vit_jax.train.preemption import PreemptionWatch
from vit_jax.train.setup import Setup, make_mesh, setup
from vit_jax.train.step import TrainState
from vit_jax.train.workdir import Workdir


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


def restore_or_init(config: ml_collections.ConfigDict, run: Setup, checkpointer: Checkpointer,
                    ) -> tuple[TrainState, int, str | None]:
    """`(state, examples_seen, note)`: the newest readable checkpoint of `checkpointer`, else
    the variables of the run in `config.init_from`, else the weights of `config.pretrained` (a
    fresh head), else a fresh state; `examples_seen` is the data position to resume at, `note`
    says where the run starts (None when fresh)."""
    if checkpointer.latest_step() is not None:
        state, position = checkpointer.restore(run.abstract_state, config.model_name)
        return state, position['examples_seen'], (
            f'Resumed from {checkpointer.directory} at step {int(state.step)} '
            f'({position["examples_seen"]:,} training examples read).')
    state = run.init(jax.random.PRNGKey(config.seed))
    if config.init_from:
        state, step = _init_from(state, run, Workdir(config.init_from))
        return state, 0, (f'Starting from the variables of {config.init_from} at step {step} '
                          f'(a fresh optimizer state).')
    if config.pretrained:
        state = _load_pretrained(state, run.model, config.pretrained)
        return state, 0, f'Starting from the weights in {config.pretrained}.'
    return state, 0, None


def _init_from(state: TrainState, run: Setup, other: Workdir) -> tuple[TrainState, int]:
    """`(state, step)`: `state` with the parameters, BatchNorm statistics and moving average of
    the newest readable checkpoint of the run in `other`, read into this run's placement, and
    that checkpoint's step; the optimizer state, step and RNG key stay `state`'s. When that run
    kept no moving average, this one's starts from its parameters."""
    template = {'params': run.abstract_state.params, **run.abstract_state.model_state}
    try:
        variables, step = other.load_variables(template)
    except ConfigError as e:
        raise ConfigError(f'--config.init_from={other}: {e}') from None
    state = state.replace(params=variables.pop('params'), model_state=variables)
    if state.ema:
        average = other.load_variables(template, step, ema=True)[0] if \
            other.read_config().ema_decay else {'params': state.params, **state.model_state}
        state = state.replace(ema=jax.tree.map(sharding.place, average, state.ema))
    return state, step


def _load_pretrained(state: TrainState, model: nn.Module, path: str) -> TrainState:
    """`state` with parameters (and BatchNorm statistics) from the weights file `path`, placed
    as the state's own arrays are; the head starts afresh, as in the original fine-tuning. The
    moving average of the weights, if any, starts from them too."""
    variables = weights.load(model, path, reset_head=True)
    params = variables.pop('params')
    state = state.replace(params=jax.tree.map(sharding.place, params, state.params),
                          model_state=jax.tree.map(sharding.place, variables, state.model_state))
    if state.ema:
        state = state.replace(ema=jax.tree.map(sharding.place, {'params': params, **variables},
                                               state.ema))
    return state


def _ema_text(result: dict[str, float]) -> str:
    """`' (EMA weights: accuracy A, loss L)'` when `result` has them, else ''."""
    if 'ema_accuracy' not in result:
        return ''
    return f' (EMA weights: accuracy {result["ema_accuracy"]:.4f}, loss {result["ema_loss"]:.4f})'


def _check_finite(metrics: dict[str, jax.Array], step: int, checkpointer: Checkpointer) -> None:
    """Stops the run at a non-finite loss, gradient or updated state (parameters, moving
    average); the saved checkpoints are all older, each checked finite before it was saved."""
    if not int(metrics['finite']):
        kept = checkpointer.all_steps()
        raise TrainingError(
            f'non-finite loss ({float(metrics["loss"])}), gradient norm '
            f'({float(metrics["grad_norm"])}) or updated weights at step {step}; lower '
            f'--config.base_lr, set --config.grad_norm_clip, or check the data for NaN/inf. The '
            f'last good checkpoint (step {kept[-1] if kept else "none"}) is kept in '
            f'{checkpointer.directory}.')


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          datasets: Callable[[ml_collections.ConfigDict, int], Datasets] | None = None,
          ) -> dict[str, float]:
    """Trains `config` in `workdir` (a local folder, `gs://...` or `s3://...`), resuming from
    its latest checkpoint; returns final eval (with `preempted_at_step` when SIGTERM stopped the
    run after saving a checkpoint).

    Before anything is written: the workdir must be writable, its run record
    (`vit_jax.train.record`) must allow `config` and its logs must read back; then the run
    takes the workdir's lock (`vit_jax.train.lock`). Writes `weights.npz` (the trained
    weights) and, with `config.ema_decay` > 0, `weights_ema.npz` (their moving average, also
    evaluated: `ema_accuracy`, `ema_loss`).

    `datasets(config, start)` returns `(train_iterator, make_eval_iterator, info)` with the
    train stream starting after `start` examples; the default is `vit_jax.data.Dataset`
    (TensorFlow; the data opened once per launch), `vit_jax.data.arrays.array_datasets` serves
    numpy arrays.
    """
    config_keys.validate(config)
    run_dir = Workdir(workdir)
    run_dir.check_writable()
    diff = run_dir.check_config(config)
    run_dir.check_files()
    try:
        with run_dir.lock() as lock:
            return _train(config, run_dir, lock, datasets, diff)
    except OSError as e:  # a write to the workdir failed: disk full, permissions
        raise run_dir.error(e, f'cannot write {e.filename or run_dir}') from None


def _train(config: ml_collections.ConfigDict, workdir: Workdir, lock: WorkdirLock,
           datasets: Callable[[ml_collections.ConfigDict, int], Datasets] | None,
           diff: dict[str, tuple[Any, Any]]) -> dict[str, float]:
    """`train` once the workdir is checked and locked."""
    datasets, info = _open_data(config, datasets)
    workdir.check_classes(info.class_names)
    run = setup(config, info.num_classes, make_mesh(config))
    sharding.check_input_split(run.mesh.devices)
    is_main = jax.process_index() == 0
    progress = Progress(config.total_steps, config.batch,
                        stream=None if is_main else open(os.devnull, 'w'))
    checkpointer = workdir.checkpointer(every=config.checkpoint_every,
                                        keep=config.keep_checkpoints, lock=lock)
    state, examples_seen, note = restore_or_init(config, run, checkpointer)
    # The objective's frozen models (a teacher), read from their weights (also on resume).
    extras = run.objective.load_extras(config, run.abstract_extras)
    writer = workdir.metric_writer(enabled=is_main)
    if is_main:
        workdir.write_record(config, info.class_names)
        workdir.log_launch(int(state.step), diff)
        writer.truncate(int(state.step))  # steps after the checkpoint are taken again
        if info.skipped:
            skipped = workdir.write_skipped(info.skipped)
            progress.print(f'Skipped {len(info.skipped)} unreadable images (listed in '
                           f'{skipped}).')
    if note:
        progress.print(note)
    for key, (old, new) in diff.items():
        progress.print(f'--config.{key} changed: {old!r} -> {new!r}')
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    progress.print(f'{config.model_name}: {n_params:,} parameters; {info.num_train:,} train / '
                   f'{info.num_eval:,} eval examples of {info.name!r}, {info.num_classes} classes; '
                   f'mesh {dict(run.mesh.shape)} over {jax.process_count()} process(es).')
    train_iter, make_eval_iter, _ = datasets(config, examples_seen)
    fewshot_eval = _fewshot_evaluation(config, run, datasets, make_eval_iter, info)
    start = time.perf_counter()
    # Closing waits for the checkpoint being written, also when the run stops with an error.
    with PreemptionWatch() as preemption, contextlib.closing(checkpointer), \
            contextlib.closing(writer):
        state, final, preempted_at = _loop(config, run, state, extras, examples_seen,
                                           train_iter, make_eval_iter, checkpointer, writer,
                                           progress, preemption, fewshot_eval)
    if preempted_at is not None:
        progress.print(f'Preempted: saved step {preempted_at} in {checkpointer.directory}; run '
                       f'the same command to resume.')
        return {'preempted_at_step': preempted_at}
    if not final:  # resumed a finished run
        final = evaluate(run.eval_step, state, make_eval_iter(), run.batch_sharding)
    final['train_seconds'] = time.perf_counter() - start
    export(workdir, state, final)
    progress.print(
        f'Done: eval accuracy {final["accuracy"]:.4f}{_ema_text(final)} on '
        f'{final["count"]} held-out examples '
        f'in {final["train_seconds"]:.0f}s. Checkpoints: {checkpointer.directory}; metrics: '
        f'{writer.path} (TensorBoard: {writer.tensorboard}); weights in the original .npz '
        f'layout: {workdir.weights_file}'
        f'{" (their moving average: weights_ema.npz)" if state.ema else ""}.')
    return final


def _open_data(config: ml_collections.ConfigDict,
               datasets: Callable[[ml_collections.ConfigDict, int], Datasets] | None,
               ) -> tuple[Callable[[ml_collections.ConfigDict, int], Datasets], DatasetInfo]:
    """`(datasets, info)` before any stream is built: by default `vit_jax.data.Dataset`, the
    data opened once for the whole run (its metadata read, folder images checked); else the
    given `datasets` callable and its info, its streams at position 0 left unread."""
    if datasets is not None:
        return datasets, datasets(config, 0)[2]
    from vit_jax import data  # the input pipeline imports TensorFlow: only when used

    dataset = data.Dataset(config)
    return dataset, dataset.info


def _loop(config: ml_collections.ConfigDict, run: Setup, state: TrainState,
          extras: dict[str, Any], examples_seen: int, train_iter: Iterator[dict],
          make_eval_iter: Callable[[], Iterable[dict]], checkpointer: Checkpointer,
          writer: MetricWriter, progress: Progress, preemption: PreemptionWatch,
          fewshot_eval: Callable[[TrainState], dict[str, float]] | None = None,
          ) -> tuple[TrainState, dict[str, float], int | None]:
    """Steps from `state.step` to `config.total_steps` (the train step given `extras`, the
    variables of the objective's frozen models), logging, evaluating and saving on the way;
    `fewshot_eval(state)` every `config.fewshot_every` steps and at the end, after that
    step's checkpoint is saved (an evaluator that fails loses no step). Returns `(state,
    final eval, None)`, or `(state, {}, step)` when SIGTERM stopped the run after saving
    `step`; the final eval is `{}` when no step was left to take."""
    first = int(state.step)
    final: dict[str, float] = {}
    previous = None
    for step in range(first + 1, config.total_steps + 1):
        batch = sharding.to_global(next(train_iter), run.batch_sharding)
        state, metrics = run.train_step(state, batch, extras)
        examples_seen += config.batch
        if previous is not None:  # a step behind, so the device never waits on the host
            _check_finite(previous, step - 1, checkpointer)
        previous = metrics
        if step == first + 1:
            jax.block_until_ready(metrics)
            progress.restart(step)
        preempted = preemption.requested(step)
        last = preempted or step == config.total_steps
        evaluating = (config.eval_every and step % config.eval_every == 0) or \
            step == config.total_steps
        if step % config.progress_every == 0 or evaluating or last or (
                config.checkpoint_every and step % config.checkpoint_every == 0):
            _check_finite(metrics, step, checkpointer)
        if step % config.progress_every == 0 or step == config.total_steps:
            _log_train(step, metrics, run.schedule, writer, progress)
        checkpointer.check_saved()
        if last or (config.checkpoint_every and step % config.checkpoint_every == 0):
            writer.flush()  # a run resumed from this checkpoint finds its metrics
        position = {'model_name': config.model_name, 'step': step,
                    'examples_seen': examples_seen, 'batch': config.batch,
                    'process_count': jax.process_count()}
        checkpointer.maybe_save(step, state, position, force=last)
        if evaluating:  # after the save: an evaluation that fails loses no step
            final = evaluate(run.eval_step, state, make_eval_iter(), run.batch_sharding)
            _log_eval(step, final, writer, progress)
        if fewshot_eval and (step % config.fewshot_every == 0 or step == config.total_steps):
            _log_fewshot(step, fewshot_eval(state), writer, progress)
        if preempted:
            return state, {}, step
    return state, final, None


def _log_train(step: int, metrics: dict[str, jax.Array], schedule: optax.Schedule,
               writer: MetricWriter, progress: Progress) -> None:
    """Writes the step's training metrics, learning rate and throughput; updates the bar."""
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'finite'}
    scalars['learning_rate'] = float(schedule(step - 1))
    scalars['img_per_s'] = progress.update(step, {k: scalars[k] for k in ('loss',)})
    writer.write(step, {f'train_{k}': v for k, v in scalars.items()})


def _log_eval(step: int, result: dict[str, float], writer: MetricWriter,
              progress: Progress) -> None:
    """Prints and writes one evaluation."""
    progress.print(f'step {step}: eval accuracy {result["accuracy"]:.4f}, loss '
                   f'{result["loss"]:.4f}{_ema_text(result)} over {result["count"]} examples')
    writer.write(step, {f'eval_{k}': v for k, v in result.items()})


def _fewshot_evaluation(config: ml_collections.ConfigDict, run: Setup,
                        datasets: Callable[[ml_collections.ConfigDict, int], Datasets],
                        make_eval_iter: Callable[[], Iterable[dict]], info: DatasetInfo,
                        ) -> Callable[[TrainState], dict[str, float]] | None:
    """`evaluate(state) -> {'fewshot_k{k}': accuracy}` of the state's parameters
    (`vit_jax.train.fewshot.evaluate`: examples of `config.fewshot_train`, scored on the eval
    split), its features computed on the mesh and gathered on every process; None when
    `config.fewshot_every` is 0."""
    if not config.fewshot_every:
        return None
    make_train_iter = datasets(fewshot.train_split_config(config), 0)[1]
    placement = {'params': run.state_sharding.params, **run.state_sharding.model_state}
    step = jax.jit(sharding.on_mesh(fewshot.feature_step(run.model, config.pp.normalize), run.mesh),
                   in_shardings=(placement, run.batch_sharding),
                   out_shardings=sharding.replicated(run.mesh))

    def placed(batches: Iterable[dict]) -> Iterator[dict]:
        return (sharding.to_global(batch, run.batch_sharding) for batch in batches)

    def evaluate(state: TrainState) -> dict[str, float]:
        return fewshot.evaluate(step, {'params': state.params, **state.model_state},
                                placed(make_train_iter()), placed(make_eval_iter()),
                                info.num_classes, tuple(config.fewshot_shots), config.seed)

    return evaluate


def _log_fewshot(step: int, result: dict[str, float], writer: MetricWriter,
                 progress: Progress) -> None:
    """Prints and writes one few-shot evaluation."""
    progress.print(f'step {step}: few-shot accuracy ' + ', '.join(
        f'{key.removeprefix("fewshot_k")}-shot {value:.4f}' for key, value in result.items()))
    writer.write(step, result)


def export(workdir: Workdir, state: TrainState, final: dict[str, float]) -> None:
    """The finished run's files (`Workdir.export`): final metrics and the weights (and their
    moving average). Every process takes part in gathering sharded arrays; process 0 writes."""
    variables = multihost_utils.process_allgather({'params': state.params, **state.model_state},
                                                  tiled=True)
    ema_variables = multihost_utils.process_allgather(state.ema, tiled=True) if state.ema else {}
    if jax.process_index() == 0:
        workdir.export(final, variables, ema_variables)
