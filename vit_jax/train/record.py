"""The run record: what a workdir promises about the run in it.

- `config.json`: the full config of the run, written at its first launch. Every later launch
  compares its config with it before writing anything to the workdir (`check_config`): keys of
  `MAY_CHANGE` may differ (the schedule's length, how often to log, evaluate and save, the
  device layout: nothing the saved state depends on); any other difference is a one-line
  `ConfigError` listing each changed key with both values.
- `classes.txt`: the class names, in label order; a later launch must read the same ones.
- `runs.jsonl`: one line per launch: time, host, pid, the step it started at and its config
  diff against the record.

`read_config` and `read_classes` read `config.json` and `classes.txt` back (for
`vit_jax.workdir`, the reader of a run).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import tempfile
from typing import Any

import ml_collections

from vit_jax.errors import ConfigError, VitJaxError, WorkdirError

# Keys a launch may change against the run record; every other key must equal it.
MAY_CHANGE = (
    'total_steps', 'eval_every', 'progress_every', 'checkpoint_every', 'keep_checkpoints',
    'batch_eval', 'input_threads', 'shuffle_buffer', 'tfds_data_dir', 'mesh', 'param_sharding',
    'fsdp_min_size', 'accum_steps', 'pretrained', 'init_from', 'skip_bad_images',
)


def flat_config(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """`{dotted key: value}` of `config` as `config.json` holds it (tuples as lists)."""
    tree = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update({f'{key}.{k}': v for k, v in flat_config(value).items()})
        else:
            out[key] = value
    return out


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` trained with (`config.json`; lists of model options read
    back as tuples)."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise VitJaxError(f'{workdir} holds no config.json; is it the --workdir of a run?')
    with open(path) as f:
        saved = json.load(f)
    saved['model'] = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in saved.get('model', {}).items()}
    return ml_collections.ConfigDict(saved)


def read_classes(workdir: str) -> tuple[str, ...]:
    """The class names of a run in `workdir` (`classes.txt`, one per line, in label order)."""
    path = os.path.join(workdir, 'classes.txt')
    if not os.path.isfile(path):
        raise VitJaxError(f'{workdir} holds no classes.txt; is it the --workdir of a run?')
    with open(path) as f:
        return tuple(line.rstrip('\n') for line in f)


def config_diff(saved: dict[str, Any], config: ml_collections.ConfigDict,
                ) -> dict[str, tuple[Any, Any]]:
    """`{key: (recorded value, value of config)}` for each key where they differ (a key only
    one of them has: `'<absent>'` for the other). A key the record lacks, added by a later
    version, stands at its default there: `base_config`'s, None for a model option."""
    from vit_jax.config import base_config  # here: vit_jax.config imports vit_jax.train

    defaults = flat_config(base_config())
    current = flat_config(config)

    def recorded(key: str) -> Any:
        if key in saved:
            return saved[key]
        return None if key.startswith('model.') else defaults.get(key, '<absent>')

    return {k: (recorded(k), current.get(k, '<absent>'))
            for k in sorted(saved.keys() | current.keys())
            if recorded(k) != current.get(k, '<absent>')}


def check_config(workdir: str, config: ml_collections.ConfigDict,
                 ) -> dict[str, tuple[Any, Any]]:
    """The diff of `config` against the run record of `workdir` (`{}` for a new workdir), when
    it changes `MAY_CHANGE` keys only; else a `ConfigError` naming each other key. Reads only."""
    if not os.path.isfile(os.path.join(workdir, 'config.json')):
        return {}
    diff = config_diff(flat_config(read_config(workdir)), config)
    fixed = {k: v for k, v in diff.items() if k.split('.')[0] not in MAY_CHANGE}
    if fixed:
        changes = ', '.join(f'{k}={old!r} there, {new!r} here' for k, (old, new) in fixed.items())
        raise ConfigError(
            f'{workdir} holds a run of another config ({changes}); rerun with its values (see '
            f'{os.path.join(workdir, "config.json")}), or start a new --workdir from its '
            f'weights with --config.init_from={workdir}')
    return diff


def check_classes(workdir: str, class_names: tuple[str, ...]) -> None:
    """A `ConfigError` when `workdir/classes.txt` names other classes than `class_names`."""
    if not os.path.isfile(os.path.join(workdir, 'classes.txt')):
        return
    saved = read_classes(workdir)
    if saved != class_names:
        changed = sorted(set(saved) ^ set(class_names)) or 'their order'
        raise ConfigError(f'{workdir} holds a run of {len(saved)} other classes than the '
                          f'dataset\'s {len(class_names)} (differing: {changed}); use the '
                          f'dataset it trained on, or a new --workdir')


def check_writable(workdir: str) -> None:
    """Creates `workdir` if needed and writes and removes a probe file in it: a one-line
    `WorkdirError` when that fails (read-only, no permission, full)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write-probe-', dir=workdir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f'cannot write {workdir}: {e.strerror or e}; '
                           f'{_WRITE_HINTS.get(e.errno, _WRITE_HINTS[None])}') from None


_WRITE_HINTS = {errno.ENOSPC: 'free some space', errno.EDQUOT: 'free some of your quota',
                errno.EROFS: 'use a writable --workdir',
                None: 'use a --workdir this user may write to'}


def write_error(path: str, error: OSError) -> WorkdirError:
    """`cannot write FILE: CAUSE; ...` for an `OSError` of a write under the workdir `path`."""
    hint = _WRITE_HINTS.get(error.errno, _WRITE_HINTS[None])
    return WorkdirError(f'cannot write {error.filename or path}: {error.strerror or error}; '
                        f'{hint}, then run the same command to resume from the last checkpoint')


def _write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so readers never see a partial one."""
    fd, tmp = tempfile.mkstemp(prefix='.partial-', dir=os.path.dirname(path))
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def write_record(workdir: str, config: ml_collections.ConfigDict,
                 class_names: tuple[str, ...]) -> None:
    """`config.json` (the config of this launch) and `classes.txt`."""
    _write_atomic(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
    _write_atomic(os.path.join(workdir, 'classes.txt'), ''.join(f'{n}\n' for n in class_names))


def log_launch(workdir: str, step: int, diff: dict[str, tuple[Any, Any]]) -> None:
    """Appends this launch to `runs.jsonl`: time, host, pid, start step, config diff."""
    entry = {'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
             'host': socket.gethostname(), 'pid': os.getpid(), 'start_step': step,
             'changed': {k: {'was': old, 'now': new} for k, (old, new) in diff.items()}}
    with open(os.path.join(workdir, 'runs.jsonl'), 'a') as f:
        f.write(json.dumps(entry) + '\n')
