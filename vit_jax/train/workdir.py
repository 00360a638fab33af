"""A training run's workdir, on local disk or in a bucket (`gs://`, `s3://`): every file of the run
and the one way each is written and read.

    workdir = Workdir('gs://bucket/run')
    model, variables, config, classes = workdir.load_run()

What it holds:
- `config.json`, `classes.txt`, `runs.jsonl`: the run record (`vit_jax.train.record` decides
  what a later launch may change);
- `lock`: the run training there (`vit_jax.train.lock`);
- `checkpoints/<step>`: orbax checkpoints (`vit_jax.train.checkpoint`);
- `metrics.jsonl`, `tensorboard/`: metrics (`vit_jax.train.metrics`);
- `skipped_images.txt`: images the dataset's check skipped;
- `final_metrics.json`, `weights.npz`, `weights_ema.npz`: what a finished run exports.

Every file is written whole or not at all (`vit_jax.storage.write_atomic`); nothing else in
vit_jax joins paths into a workdir. Reading a run (`load_run`) writes, moves and deletes nothing,
also while it trains; its arrays are placed on this process's first device.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from etils import epath

from vit_jax import storage, weights
from vit_jax.errors import VitJaxError, WorkdirError
from vit_jax.train import record, sharding
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.lock import WorkdirLock
from vit_jax.train.metrics import MetricWriter, parse_metrics
from vit_jax.train.setup import abstract_variables, build_model


class Workdir:
    """The files of the run in `location` (a local folder, `gs://...` or `s3://...`)."""

    def __init__(self, location: str | os.PathLike):
        self.path = storage.path(location)

    def __str__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f'Workdir({str(self)!r})'

    def file(self, name: str) -> epath.Path:
        """The file `name` in the workdir: the run's own, or one a tool keeps beside them (the
        ablation study's `point.json`)."""
        return self.path / name

    # --------------------------------------------------------------------------- the record

    def read_config(self) -> ml_collections.ConfigDict:
        """The config the run trained with (`config.json`)."""
        try:
            saved = json.loads(self._read('config.json'))
        except ValueError as e:
            raise self._damaged('config.json', f'is not valid JSON ({e})') from None
        try:
            return record.parse_config(saved)
        except ValueError as e:
            raise self._damaged('config.json', str(e)) from None

    def read_classes(self) -> tuple[str, ...]:
        """The run's class names, in label order (`classes.txt`)."""
        try:
            return record.parse_classes(self._read('classes.txt'))
        except ValueError as e:
            raise self._damaged('classes.txt', str(e)) from None

    def _damaged(self, name: str, what: str) -> WorkdirError:
        return WorkdirError(f'{self.file(name)} {what}; restore it from a copy, or start a new '
                            f'--workdir')

    def _read(self, name: str) -> str:
        try:  # universal newlines, as Python's text files read them
            return self._read_bytes(name).decode().replace('\r\n', '\n').replace('\r', '\n')
        except UnicodeDecodeError as e:
            raise self._damaged(name, f'is not UTF-8 text ({e.reason} at byte {e.start})'
                                ) from None

    def _read_bytes(self, name: str) -> bytes:
        target = self.file(name)
        try:
            return target.read_bytes()
        except FileNotFoundError as e:
            if storage.bucket_missing(self.path):
                raise self.error(e, f'cannot read {self}', resume=False) from None
            raise VitJaxError(f'{self} holds no {name}; is it the --workdir of a run?') from None
        except Exception as e:  # noqa: BLE001 -- any store failure (no credentials...): one line
            raise self.error(e, f'cannot read {target}', resume=False) from None

    def check_config(self, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
        """The diff of `config` against the run record (`{}` for a new run), when it changes
        `record.MAY_CHANGE` keys only; else a `ConfigError` naming each other key. A run with
        checkpoints but no `config.json` is a `WorkdirError`: nothing would hold the config."""
        if not self._exists('config.json'):
            self._check_record_kept('config.json')
            return {}
        diff = record.config_diff(record.flat_config(self.read_config()), config)
        record.check_changes(diff, str(self))
        return diff

    def check_classes(self, class_names: tuple[str, ...]) -> None:
        """A `ConfigError` when the run recorded other class names than `class_names`; a
        `WorkdirError` when a run with checkpoints has no `classes.txt`."""
        if self._exists('classes.txt'):
            record.check_classes(self.read_classes(), class_names, str(self))
        else:
            self._check_record_kept('classes.txt')

    def _check_record_kept(self, name: str) -> None:
        """A `WorkdirError` when the run record's `name` is gone but checkpoints are left."""
        checkpoints = self.file('checkpoints')
        if self._exists('checkpoints') and checkpoints.is_dir() and any(
                p.name.isdigit() for p in checkpoints.iterdir()):
            raise WorkdirError(
                f'{self} holds checkpoints but no {name}, so nothing says what they were '
                f'trained with; restore {name} from a copy, or start a new --workdir from '
                f'their weights with --config.init_from={self}')

    def check_files(self) -> None:
        """Reads the files a launch rewrites (`metrics.jsonl`, `runs.jsonl`) and finds
        `checkpoints` a folder: a damaged one is a one-line `WorkdirError`, before anything is
        written. (A torn last line is no damage: the launch repairs it.)"""
        self.read_metrics()
        if self._exists('runs.jsonl'):
            self._read_bytes('runs.jsonl')
        if self._exists('checkpoints') and not self.file('checkpoints').is_dir():
            raise self._damaged('checkpoints', 'is not a folder')

    def write_record(self, config: ml_collections.ConfigDict,
                     class_names: tuple[str, ...]) -> None:
        """`config.json` (the config of this launch) and `classes.txt`."""
        storage.write_atomic(self.file('config.json'), record.config_text(config))
        storage.write_atomic(self.file('classes.txt'), record.classes_text(class_names))

    def log_launch(self, step: int, diff: dict[str, tuple[Any, Any]]) -> None:
        """Appends this launch to `runs.jsonl`."""
        target = self.file('runs.jsonl')
        old = target.read_bytes() if target.exists() else b''
        if old and not old.endswith(b'\n'):  # a line cut short by a kill: complete it
            old += b'\n'
        storage.write_atomic(target, old + f'{record.launch_entry(step, diff)}\n'.encode())

    def _exists(self, name: str) -> bool:
        try:
            return self.file(name).exists()
        except OSError as e:
            raise self.error(e, f'cannot read {self}') from None

    def check_writable(self) -> None:
        """Creates the workdir if needed and writes and removes a probe in it: a one-line
        `WorkdirError` when that fails (read-only, no permission, full, no such bucket)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.file(f'.write-probe-{os.getpid()}')
            probe.write_bytes(b'')
            probe.unlink()
        except Exception as e:  # noqa: BLE001 -- any store failure: one line
            raise self.error(e, f'cannot write {self}', resume=False) from None

    def error(self, error: BaseException, doing: str, *, resume: bool = True) -> WorkdirError:
        """`DOING: CAUSE; WHAT TO DO` for a failed read or write in the workdir."""
        cause, hint = storage.describe(error, '--workdir', self.path)
        then = ', then run the same command to resume from the last checkpoint' if resume else ''
        return WorkdirError(f'{doing}: {cause}; {hint}{then}')

    # ------------------------------------------------------------------- lock, checkpoints

    def lock(self) -> WorkdirLock:
        """The lock one run holds while it trains here."""
        return WorkdirLock(self.file('lock'))

    def checkpointer(self, *, every: int = 0, keep: int = 1, read_only: bool = False,
                     lock: WorkdirLock | None = None) -> Checkpointer:
        """The run's checkpoints (`checkpoints/<step>`), saved every `every` steps, the newest
        `keep` kept, each save only while `lock` is still this run's; `read_only` for readers
        of the run."""
        return Checkpointer(self.file('checkpoints'), every=every, keep=keep,
                            read_only=read_only, guard=lock.check if lock else None)

    # ----------------------------------------------------------------------------- logs

    def metric_writer(self, *, enabled: bool = True) -> MetricWriter:
        """The writer of `metrics.jsonl` and `tensorboard/`."""
        return MetricWriter(self.file('metrics.jsonl'), self.file('tensorboard'),
                            enabled=enabled)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of `metrics.jsonl`, in order (`[]` before the first)."""
        if not self._exists('metrics.jsonl'):
            return []
        try:
            return parse_metrics(self._read('metrics.jsonl'))
        except ValueError as e:
            raise WorkdirError(f'{self.file("metrics.jsonl")}: {e}; delete that line, or move '
                               f'the file aside, then run the same command again') from None

    def write_skipped(self, lines: tuple[str, ...]) -> epath.Path:
        """`skipped_images.txt`: the images the dataset's check skipped, one per line."""
        target = self.file('skipped_images.txt')
        storage.write_atomic(target, ''.join(f'{line}\n' for line in lines))
        return target

    # -------------------------------------------------------------------------- outputs

    def export(self, final: dict[str, float], variables: dict[str, Any],
               ema_variables: dict[str, Any]) -> None:
        """`final_metrics.json`, `weights.npz` (the original .npz layout) and, when given,
        `weights_ema.npz` (the moving average of the weights)."""
        storage.write_atomic(self.file('final_metrics.json'), json.dumps(final, indent=2))
        weights.save_npz(variables, self.file('weights.npz'))
        if ema_variables:
            weights.save_npz(ema_variables, self.file('weights_ema.npz'))

    @property
    def weights_file(self) -> epath.Path:
        """`weights.npz`, the trained weights a finished run exported."""
        return self.file('weights.npz')

    # --------------------------------------------------------------------- reading a run

    def load_model(self) -> tuple[nn.Module, ml_collections.ConfigDict, tuple[str, ...]]:
        """`(model, config, classes)` of the run, from `config.json` and `classes.txt` (no
        checkpoint read)."""
        config = self.read_config()
        classes = self.read_classes()
        try:
            return build_model(config, len(classes)), config, classes
        except (AttributeError, KeyError, TypeError) as e:  # a key missing or of another type
            raise self._damaged('config.json', f'describes no model vit_jax builds '
                                f'({type(e).__name__}: {e})') from None

    def load_variables(self, template: dict[str, Any], step: int | None = None, *,
                       ema: bool = False) -> tuple[dict[str, Any], int]:
        """`(variables, step)`: the model's variables (`{'params': ..., **model_state}`) of the
        newest readable checkpoint (or the one at `step`), or with `ema` their moving average,
        shaped and placed as `template` (`jax.ShapeDtypeStruct`s with shardings). Reads nothing
        else of the training state."""
        checkpointer = self.checkpointer(read_only=True)
        try:
            if checkpointer.latest_step() is None:
                raise VitJaxError(f'{checkpointer.directory} holds no checkpoint; has the run '
                                  f'in {self} saved one yet?')
            return checkpointer.restore_variables(template, step, ema=ema)
        finally:
            checkpointer.close()

    def load_run(self, step: int | None = None, *, ema: bool = False,
                 ) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict,
                            tuple[str, ...]]:
        """`(model, variables, config, classes)` of the run: `variables` of its newest readable
        checkpoint, or of the one at `step`; with `ema`, the moving average of the weights
        (runs with `ema_decay` > 0)."""
        model, config, classes = self.load_model()
        if ema and not config.ema_decay:
            raise VitJaxError(f'the run in {self} kept no moving average of the weights '
                              f'(ema_decay is 0); load its weights without ema')
        mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
        variables, _ = self.load_variables(abstract_variables(model, mesh, config), step,
                                           ema=ema)
        return model, variables, config, classes

