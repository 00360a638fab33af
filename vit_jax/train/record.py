"""The run record: what a workdir promises about the run in it (`vit_jax.train.workdir.Workdir`
reads and writes the files; this module decides what they mean).

- `config.json`: the full config of the run, written at its first launch. Every later launch
  compares its config with it before writing anything to the workdir (`check_changes`): keys of
  `config_keys.MAY_CHANGE` may differ (the schedule's length, how often to log, evaluate and
  save, the device layout: nothing the saved state depends on); any other difference is a
  one-line `ConfigError` listing each changed key with both values.
- `classes.txt`: the class names, in label order; a later launch must read the same ones.
- `runs.jsonl`: one line per launch (`launch_entry`): time, host, pid, the step it started at
  and its config diff against the record.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any

import ml_collections

from vit_jax.errors import ConfigError
from vit_jax.train.config_keys import MAY_CHANGE, base_config


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


def config_text(config: ml_collections.ConfigDict) -> str:
    """`config.json`'s contents for `config`."""
    return config.to_json_best_effort(indent=2)


def parse_config(saved: Any) -> ml_collections.ConfigDict:
    """The config `config.json` holds (lists of model options read back as tuples); a
    `ValueError` saying what is missing when it holds none."""
    if not isinstance(saved, dict):
        raise ValueError(f'holds no config (a JSON {type(saved).__name__})')
    if not isinstance(saved.get('model_name'), str) or not all(
            isinstance(saved.get(key, {}), dict) for key in ('model', 'pp')):
        raise ValueError('names no model (a string model_name, objects model and pp)')
    saved['model'] = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in saved.get('model', {}).items()}
    return ml_collections.ConfigDict(saved)


def classes_text(class_names: tuple[str, ...]) -> str:
    """`classes.txt`'s contents: one name per line, in label order."""
    return ''.join(f'{n}\n' for n in class_names)


def parse_classes(text: str) -> tuple[str, ...]:
    """The class names `classes.txt` holds; a `ValueError` when it holds none, or a name
    twice."""
    names = tuple(text.removesuffix('\n').split('\n')) if text else ()
    if not names:
        raise ValueError('holds no class name')
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f'names {twice} more than once')
    return names


def config_diff(saved: dict[str, Any], config: ml_collections.ConfigDict,
                ) -> dict[str, tuple[Any, Any]]:
    """`{key: (recorded value, value of config)}` for each key where they differ (a key only
    one of them has: `'<absent>'` for the other). A key the record lacks, added by a later
    version, stands at its default there: `base_config`'s, None for a model option."""
    defaults = flat_config(base_config())
    current = flat_config(config)

    def recorded(key: str) -> Any:
        if key in saved:
            return saved[key]
        return None if key.startswith('model.') else defaults.get(key, '<absent>')

    return {k: (recorded(k), current.get(k, '<absent>'))
            for k in sorted(saved.keys() | current.keys())
            if recorded(k) != current.get(k, '<absent>')}


def check_changes(diff: dict[str, tuple[Any, Any]], workdir: str) -> None:
    """A `ConfigError` naming each key of `diff` outside `MAY_CHANGE` (`workdir` for the
    message)."""
    fixed = {k: v for k, v in diff.items() if k.split('.')[0] not in MAY_CHANGE}
    if fixed:
        changes = ', '.join(f'{k}={old!r} there, {new!r} here' for k, (old, new) in fixed.items())
        raise ConfigError(
            f'{workdir} holds a run of another config ({changes}); rerun with its values (see '
            f'{workdir}/config.json), or start a new --workdir from its weights with '
            f'--config.init_from={workdir}')


def check_classes(saved: tuple[str, ...], class_names: tuple[str, ...], workdir: str) -> None:
    """A `ConfigError` when the recorded class names `saved` differ from `class_names`."""
    if saved != class_names:
        changed = sorted(set(saved) ^ set(class_names)) or 'their order'
        raise ConfigError(f'{workdir} holds a run of {len(saved)} other classes than the '
                          f'dataset\'s {len(class_names)} (differing: {changed}); use the '
                          f'dataset it trained on, or a new --workdir')


def launch_entry(step: int, diff: dict[str, tuple[Any, Any]]) -> str:
    """This launch's line of `runs.jsonl`: time, host, pid, start step, config diff."""
    return json.dumps({
        'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'host': socket.gethostname(), 'pid': os.getpid(), 'start_step': step,
        'changed': {k: {'was': old, 'now': new} for k, (old, new) in diff.items()}})
