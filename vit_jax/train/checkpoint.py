"""Checkpoints in a run's `checkpoints/<step>` folders (local or in a bucket) with orbax: the
whole `TrainState` (parameters, optimizer state, step, RNG key, BatchNorm statistics, the moving
average of the weights when `ema_decay` > 0) and a JSON record of the run (model name and the
data position: how many training examples were read).

On local disk orbax writes each checkpoint into a temporary directory and renames it when
complete; in a bucket it writes the step's folder and `commit_success.txt` last (`orbax_paths`
teaches orbax `s3://`). So a save interrupted at any point is never taken as the latest;
leftovers are cleaned up. A save that fails (disk full, no permission) is a one-line
`WorkdirError` at the next call, the checkpoints before it intact; its writes still in flight
leave no traceback on stderr. A complete checkpoint that cannot be read (a truncated or missing
file) is moved aside to `checkpoints/corrupt-<step>` with a warning, and the one before it is
used; one that reads but holds other arrays than the run's state (another model or optimizer) is
a `ConfigError` and stays where it is. All processes call every method (orbax saves and restores
collectively).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization
from jax.experimental import multihost_utils

from vit_jax import storage, tree
from vit_jax.errors import ConfigError, TrainingError, WorkdirError
from vit_jax.train import orbax_paths
from vit_jax.train.step import TrainState

orbax_paths.install()

log = logging.getLogger(__name__)


class _FailedSaves(logging.Filter):
    """Drops orbax's error logs (tracebacks of each thread of a failed save), keeping the first
    error: orbax's background threads log a failed save and go on, so the `Checkpointer` learns
    of it here and reports it itself, in one line."""

    def __init__(self):
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or 'orbax' not in record.pathname:
            return True
        if self.error is None and record.exc_info:
            self.error = record.exc_info[1]
        return False


def _is_late_write(report: Any) -> bool:
    """Whether the `sys.unraisablehook` `report` is asyncio refusing a completion callback
    (of a tensorstore write) because its event loop is closed."""
    frame = report.exc_traceback
    return (report.object is None and isinstance(report.exc_value, RuntimeError)
            and str(report.exc_value) == 'Event loop is closed' and frame is not None
            and frame.tb_frame.f_code.co_name == 'call_soon_threadsafe')


class _LateWrites:
    """Keeps the writes of a failed save that complete late off stderr.

    When a write of a save fails (disk full), orbax stops the save and closes its event loop;
    each write of that save still in flight reports `RuntimeError('Event loop is closed')` to
    `sys.unraisablehook` when it completes: a bare traceback on stderr per array, also after
    the run stopped. While a save is in flight these reports are held; once it failed they are
    dropped (the save's `WorkdirError` says what happened), once it succeeded they go on to
    the previous hook, as every other report does at once.
    """

    def __init__(self):
        self._previous = sys.unraisablehook
        self._held: list[Any] = []
        self._state = 'idle'  # or 'saving', 'failed'
        self._lock = threading.Lock()
        sys.unraisablehook = self._hook

    def _hook(self, report: Any) -> None:
        with self._lock:
            if self._state != 'idle' and _is_late_write(report):
                if self._state == 'saving':
                    self._held.append(report)
                return
        self._previous(report)

    @property
    def saving(self) -> bool:
        return self._state == 'saving'

    def start(self) -> None:
        """A save begins."""
        with self._lock:
            if self._state == 'idle':
                self._state = 'saving'

    def settle(self, *, failed: bool) -> None:
        """The saves begun are finished (`failed`: one of them failed, for good)."""
        with self._lock:
            if self._state == 'failed':
                return
            held, self._held = self._held, []
            self._state = 'failed' if failed else 'idle'
        if not failed:
            for report in held:
                self._previous(report)

    def close(self) -> None:
        """Hands the hook back, unless a save failed: its late writes go on completing until
        the process exits."""
        if self._state == 'idle' and sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous


class _CheckpointManager(ocp.CheckpointManager):
    """orbax's manager, minus its own queries of JAX's preemption service.

    The service remembers the step of the latest query; orbax queries it with the step it saves
    (also from its finalize thread, while the loop is steps ahead). A notice arriving then would
    set the agreed stop step behind the loop, which would never reach it. The loop alone asks,
    once per step (`vit_jax.train.preemption`), and forces the save itself.
    """

    def reached_preemption(self, step: int) -> bool:
        return False


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's warning that a read-only manager's directory is read only (it is meant
    to be)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith('Given directory is read only')


logging.getLogger('absl').addFilter(_ReadOnlyNotice())


class Checkpointer:
    """Saves in `directory` every `every` steps (and when forced), keeps the newest `keep`,
    restores the newest readable one. `read_only` (for readers of a run, e.g.
    `vit_jax.train.workdir`) creates, cleans up and moves nothing: an unreadable checkpoint
    is skipped where it lies. `guard()`, called before each save, raises when the run may no
    longer write (e.g. the workdir's lock was taken over)."""

    def __init__(self, directory: epath.Path, *, every: int, keep: int,
                 read_only: bool = False, guard: Callable[[], None] | None = None):
        self.directory = directory
        self.every = every
        self._guard = guard
        self.read_only = read_only
        self._manager = _CheckpointManager(
            self.directory,
            item_handlers={'state': ocp.StandardCheckpointHandler(),
                           'run': ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep, create=not read_only,
                cleanup_tmp_directories=not read_only, read_only=read_only,
                save_interval_steps=0 if read_only else 1))
        self._failed_saves = _FailedSaves()
        logging.getLogger('absl').addFilter(self._failed_saves)
        self._late_writes = _LateWrites()
        self._reader: ocp.CheckpointManager | None = None

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def maybe_save(self, step: int, state: TrainState, run: dict[str, Any], *,
                   force: bool = False) -> bool:
        """Saves `state` and `run` (asynchronously) at every `every`-th step, or when `force`.
        A state without a moving average of the weights is saved without an `ema` entry, as
        before there was one."""
        if not force and not (self.every and step % self.every == 0):
            return False
        if step in self._manager.all_steps():
            return False
        if self._guard is not None:
            self._guard()
        items = serialization.to_state_dict(state)
        if not items['ema']:
            del items['ema']
        self._late_writes.start()
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(items),
                run=ocp.args.JsonSave(run)), force=True)
        except Exception as e:  # noqa: BLE001 -- whatever failed the write, reported in one line
            raise self._save_error(e) from None
        return True

    def check_saved(self) -> None:
        """A `WorkdirError` naming the path and the cause when a save in the background failed
        (the checkpoints before it are intact)."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(e) from None
        if self._failed_saves.error is not None:
            raise self._save_error(self._failed_saves.error)
        if self._late_writes.saving and not self._manager.is_saving_in_progress():
            self._late_writes.settle(failed=False)

    def _save_error(self, error: BaseException) -> WorkdirError:
        self._late_writes.settle(failed=True)
        code = re.search(r"os_error_code='(\d+)'", str(error))  # tensorstore's errors
        if isinstance(error, OSError) and error.errno:
            cause = f'{error.filename or self.directory}: {error.strerror or error}'
        elif code:
            error = OSError(int(code.group(1)), os.strerror(int(code.group(1))))
            cause = error.strerror
        else:
            cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else \
                type(error).__name__
        hint = storage.describe(error, '--workdir')[1].removesuffix(
            ', then run the same command again')
        kept = self.all_steps()
        return WorkdirError(
            f'saving a checkpoint in {self.directory} failed ({cause}); the run stopped. '
            f'{hint[0].upper()}{hint[1:]}, then run the same command to resume from '
            f'step {kept[-1] if kept else 0}')

    def restore(self, template: TrainState, model_name: str, step: int | None = None,
                ) -> tuple[TrainState, dict[str, Any]]:
        """The newest readable checkpoint (or the one at `step`), shaped and placed like
        `template` (arrays, or `jax.ShapeDtypeStruct`s with shardings), and its run record.

        A checkpoint of another model (other names or shapes), or one with a moving average of
        the weights when `template` has none or the other way round, is a `ConfigError`; one that
        cannot be read is moved aside (left in place when `read_only`) and the previous one
        tried.
        """
        target = serialization.to_state_dict(template)

        def read(candidate: int) -> tuple[TrainState, dict[str, Any]]:
            run = dict(self._restore_item(candidate, 'run', ocp.args.JsonRestore()))
            metadata = self._state_metadata(candidate)
            self._check_same_model(candidate, run, metadata, target, model_name)
            self._check_same_state(candidate, metadata, target)
            wanted = target if 'ema' in metadata else {
                k: v for k, v in target.items() if k != 'ema'}
            restored = {'ema': {}, **self._restore_item(
                candidate, 'state', ocp.args.StandardRestore(wanted))}
            return serialization.from_state_dict(template, restored), run

        return self._first_readable(step, read)

    def restore_variables(self, template: dict[str, Any], step: int | None = None, *,
                          ema: bool = False) -> tuple[dict[str, Any], int]:
        """`(variables, step)`: the model's variables (`{'params': ..., **model_state}`, or with
        `ema` their moving average) of the newest readable checkpoint, or of the one at `step`,
        shaped and placed like `template`; nothing else of the training state is read. Arrays
        of other names or shapes than `template`'s are a `ConfigError` naming the first."""

        def read(candidate: int) -> tuple[dict[str, Any], int]:
            metadata = self._state_metadata(candidate)
            if ema and 'ema' not in metadata:
                raise ConfigError(f'checkpoint {candidate} in {self.directory} holds no moving '
                                  f'average of the weights; read its weights without ema')
            stored = metadata['ema'] if ema else {'params': metadata['params'],
                                                  **metadata.get('model_state', {})}
            _check_same_arrays(stored, template, f'checkpoint {candidate} in {self.directory}')
            wanted = {'ema': template} if ema else {
                'params': template['params'],
                'model_state': {k: v for k, v in template.items() if k != 'params'}}
            restored = self._partial_reader().restore(candidate, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                    partial_restore=True)))['state']
            variables = restored['ema'] if ema else {'params': restored['params'],
                                                     **restored['model_state']}
            return variables, candidate

        return self._first_readable(step, read)

    def _first_readable(self, step: int | None, read: Any) -> Any:
        """`read(candidate)` of the newest checkpoint it reads (only `step`'s when given): a
        `ConfigError` stops the search; any other failure sets the checkpoint aside and tries
        the one before. A `step` that is not kept is an error at once."""
        if step is not None and step not in self.all_steps():
            raise TrainingError(f'no readable checkpoint {step} in {self.directory}; steps there: '
                                f'{self.all_steps()}')
        for candidate in reversed(self.all_steps() if step is None else [step]):
            try:
                return read(candidate)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 -- unreadable for whatever reason: fall back
                self._set_aside(candidate, e)
        if self.read_only:
            raise TrainingError(f'no readable checkpoint{"" if step is None else f" {step}"} in '
                                f'{self.directory}; steps there: {self.all_steps()}')
        raise TrainingError(f'no readable checkpoint in {self.directory}; the unreadable ones '
                            f'were moved to corrupt-<step>: delete them or use a new --workdir')

    def _state_metadata(self, step: int) -> Any:
        """The array metadata (names, shapes) of checkpoint `step`'s state; a `ValueError` (the
        checkpoint is unreadable) when its `state/_METADATA` is missing or holds no shapes."""
        metadata = self._manager.item_metadata(step)['state']
        leaves = jax.tree_util.tree_leaves(metadata, is_leaf=lambda x: x is None)
        if not leaves or any(getattr(x, 'shape', None) is None for x in leaves):
            raise ValueError('its array metadata (state/_METADATA) is missing or damaged')
        return metadata

    def _partial_reader(self) -> ocp.CheckpointManager:
        """A read-only manager whose `state` handler restores a part of the state."""
        if self._reader is None:
            self._reader = ocp.CheckpointManager(
                self.directory, item_handlers={'state': ocp.PyTreeCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                     save_interval_steps=0))
        return self._reader

    def _restore_item(self, step: int, name: str, args: ocp.args.CheckpointArgs) -> Any:
        return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

    def _check_same_model(self, step: int, run: dict[str, Any], metadata: Any, target: Any,
                          model_name: str) -> None:
        saved = {tree.array_name(p): tuple(m.shape) for p, m in
                 jax.tree_util.tree_leaves_with_path(metadata) if hasattr(m, 'shape')}
        wanted = {tree.array_name(p): tuple(np.shape(x)) for p, x in
                  jax.tree_util.tree_leaves_with_path(target)}
        diff = next((k for k in _differing(saved, wanted) if k.startswith('params/')), None)
        scanned = [any(tree.layer_axes(k) for k in names) for names in (saved, wanted)]
        if diff is not None and scanned[0] != scanned[1]:
            raise ConfigError(
                f'--workdir holds checkpoints written with --config.model.scan_layers='
                f'{scanned[0]}; resume with that setting (its weights.npz loads either way)')
        if diff is not None:
            raise ConfigError(
                f'--workdir holds checkpoints of another model ({run.get("model_name")!r}: '
                f'{diff} is {saved.get(diff)} there, {wanted.get(diff)} in {model_name!r}); use '
                f'a new --workdir, or the config that wrote {self.directory}')
        saved_ema, wanted_ema = (any(k.startswith('ema/') for k in names)
                                 for names in (saved, wanted))
        if saved_ema != wanted_ema:
            raise ConfigError(
                f'--workdir holds checkpoints {"with" if saved_ema else "without"} a moving '
                f'average of the weights, and this run has {"none" if saved_ema else "one"}; '
                f'set --config.ema_decay as the run that wrote {self.directory}, or use a new '
                f'--workdir')

    def _check_same_state(self, step: int, metadata: Any, target: Any) -> None:
        """A `ConfigError` when checkpoint `step` holds other arrays than `target` besides the
        moving average (e.g. another optimizer's state): it is readable, so it stays."""
        def outside_ema(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
            return {k: v for k, v in shapes.items() if not k.startswith('ema/')}
        saved = outside_ema(_shapes(metadata))
        wanted = outside_ema(_shapes(target, _stored_shape))
        diff = _differing(saved, wanted)
        if diff:
            raise ConfigError(
                f'checkpoint {step} in {self.directory} holds another training state than '
                f'this run ({len(diff)} arrays differ, e.g. {diff[0]}: {saved.get(diff[0])} '
                f'there, {wanted.get(diff[0])} here: another optimizer or grad_norm_clip?); '
                f'resume with the config in config.json, or start a new --workdir from its '
                f'weights with --config.init_from')

    def _set_aside(self, step: int, error: Exception) -> None:
        previous = [s for s in self.all_steps() if s < step]
        log.warning('checkpoint %d in %s is unreadable (%s: %s); %s, %s',
                    step, self.directory, type(error).__name__,
                    str(error).strip().splitlines()[0][:200] if str(error).strip() else '',
                    'left in place' if self.read_only else f'moved to corrupt-{step}',
                    f'using step {previous[-1]}' if previous else 'none left')
        if self.read_only:
            return
        if jax.process_index() == 0:
            aside = self.directory / f'corrupt-{step}'
            while aside.exists():
                aside = aside.parent / f'{aside.name}-again'
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'vit_jax set aside checkpoint {step}')
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves to finish; a failed one is a `WorkdirError`."""
        try:
            try:
                self._manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 -- the failed save's own error
                raise self._save_error(e) from None
            self.check_saved()
        finally:
            self._manager.close()
            if self._reader is not None:
                self._reader.close()
            logging.getLogger('absl').removeFilter(self._failed_saves)
            self._late_writes.close()


def _check_same_arrays(stored: Any, template: Any, where: str) -> None:
    """A `ConfigError` naming the first array whose name or shape differs between `stored`
    (checkpoint metadata) and `template`."""
    theirs, ours = _shapes(stored), _shapes(template)
    diff = _differing(theirs, ours)
    if diff:
        raise ConfigError(
            f'{where} holds another model: {diff[0]} is {theirs.get(diff[0])} there, '
            f'{ours.get(diff[0])} here; use the model options and dataset of that run (see '
            f'its config.json)')


def _shapes(tree_: Any, shape: Callable[[Any], tuple[int, ...]] = lambda x: tuple(
        getattr(x, 'shape', ()))) -> dict[str, tuple[int, ...]]:
    """`{array name: shape}` of the leaves of `tree_` (arrays, abstract arrays or checkpoint
    metadata)."""
    return {tree.array_name(p): shape(x) for p, x in jax.tree_util.tree_leaves_with_path(tree_)}


def _differing(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The names, sorted, whose shape differs between `saved` and `wanted` (or only one has)."""
    return sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))


def _stored_shape(x: Any) -> tuple[int, ...]:
    """The shape a checkpoint holds for `x`: a typed PRNG key is stored as its key data."""
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, x).shape)
    return tuple(np.shape(x))
