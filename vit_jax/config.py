"""Config files and command-line overrides.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`, named as
`path/to/file.py[:arg]` (e.g. `configs/vit.py:b16,cifar10`), then changed key by key with
`--config.key=value`. Every mistake is a `ConfigError` of one line naming the key.

The keys themselves, their defaults and what values they allow are declared in
`vit_jax.train.config_keys`; `base_config`, `model_config` and `validate` come from there.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
import types
from collections.abc import Iterable
from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference

from vit_jax.errors import ConfigError, VitJaxError
from vit_jax.train.config_keys import (
    DATA_DEFINED_OPTIONS,
    base_config,
    model_config,
    model_overrides,
    validate,
)

# The config files shipped with the package: `--config=configs/NAME.py` names them.
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')

__all__ = ['DATA_DEFINED_OPTIONS', 'adamw_recipe', 'apply_overrides', 'base_config',
           'config_path', 'load_config', 'model_config', 'model_overrides', 'parse_bool',
           'require_pretrained', 'validate']


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling the file's `get_config(arg)`.

    The file's folder is loaded as a package, so config files import their neighbours with
    `from . import common`, wherever the folder is.
    """
    path, _, arg = spec.partition(':')
    path = config_path(path)
    try:
        module = _import_file(path)
    except SyntaxError as e:
        where = f'{e.filename}:{e.lineno}' if e.filename else path
        raise ConfigError(f'{where}: {e.msg}; fix the config file') from None
    except VitJaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- the config file's own error, at its own line
        raise _failed(e, path, 'failed to load', 'fix the config file (or install the module '
                      'it imports)') from None
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path!r} has no get_config() function')
    if arg and not inspect.signature(module.get_config).parameters:
        raise ConfigError(f'config file {path!r} takes no argument, got {arg!r}; pass '
                          f'--config={path}')
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except VitJaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- the config file's own error, at its own line
        raise _failed(e, path, f'get_config({arg!r}) failed', 'check the argument after the ":" '
                      '(see the file\'s docstring)') from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'{path}: get_config() must return an ml_collections.ConfigDict')
    return config


def _failed(error: Exception, path: str, what: str, hint: str) -> ConfigError:
    """`PATH:LINE: WHAT (ERROR); HINT` for `error` raised by the config file `path`, at the
    innermost line of that file in its traceback."""
    line = next((f for f in reversed(traceback.extract_tb(error.__traceback__))
                 if os.path.abspath(f.filename) == os.path.abspath(path)), None)
    where = f'{path}:{line.lineno}' if line else path
    return ConfigError(f'{where}: {what} ({type(error).__name__}: {error}); {hint}')


def config_path(path: str) -> str:
    """`path` when it names a file, else the packaged config `configs/...` it names (the
    files of `vit_jax/configs/`, so `--config=configs/vit.py` works from any directory)."""
    if os.path.isfile(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    packaged = os.path.join(PACKAGED_CONFIGS, *parts[1:])
    if parts[0] == 'configs' and os.path.isfile(packaged):
        return packaged
    names = sorted(os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGED_CONFIGS))
                   for root, _, files in os.walk(PACKAGED_CONFIGS) for f in files
                   if f.endswith('.py') and f not in ('__init__.py', 'common.py'))
    raise ConfigError(f'config file {path!r} does not exist; pass --config=FILE.py[:ARG] with a '
                      f'file of yours or one of the packaged {", ".join(names)}')


def _import_file(path: str) -> types.ModuleType:
    """Executes the Python file `path` as a module of a package that stands for its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    package = f'_vit_jax_configs_{hashlib.sha1(folder.encode()).hexdigest()[:12]}'
    if package not in sys.modules:
        package_spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        package_spec.submodule_search_locations = [folder]
        sys.modules[package] = importlib.util.module_from_spec(package_spec)
    name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(f'{package}.{name}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Sets each dotted `key` of `config` to `value` (text, parsed as the key's type)."""
    for key, text in overrides:
        parts = key.split('.')
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise _unknown_key(key, '.'.join(parts[:depth]), node)
            if depth < len(parts) - 1:
                node = node[part]
        value = _parse(key, text, node.get_ref(parts[-1]))
        with node.unlocked():
            node[parts[-1]] = value
    return config


def _unknown_key(key: str, prefix: str, node: Any) -> ConfigError:
    keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    close = difflib.get_close_matches(key.split('.')[len(prefix.split('.')) if prefix else 0],
                                      keys, n=3)
    hint = ('; did you mean ' + ', '.join(f'--config.{_join(prefix, c)}' for c in close) + '?'
            if close else '; see the config file for the keys it has')
    return ConfigError(f'unknown config key --config.{key}{hint}')


def _join(prefix: str, key: str) -> str:
    return f'{prefix}.{key}' if prefix else key


def _parse(key: str, text: str, ref: FieldReference) -> Any:
    """Parses `text` as the type of the config field `ref`."""
    kind = ref.get_type()
    try:
        if kind is str:
            return text
        if kind is bool:
            return parse_bool(text)
        if kind in (int, float):
            return kind(text)
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (str, int, float, bool):
            raise ConfigError(f'--config.{key}={text!r} is not a valid {kind.__name__}') from None
        value = text
    if kind is not None and kind not in (type(None), object) and value is not None \
            and not isinstance(value, kind):
        raise ConfigError(f'--config.{key}={text!r}: expected a {kind.__name__}')
    return value


def parse_bool(text: str) -> bool:
    """`true`, `1`, `yes` -> True; `false`, `0`, `no` -> False (any case); else ValueError."""
    if text.lower() in ('true', '1', 'yes'):
        return True
    if text.lower() in ('false', '0', 'no'):
        return False
    raise ValueError(text)


def require_pretrained(c: ml_collections.ConfigDict) -> None:
    """Marks `c` as a fine-tune config: `validate` fails until `--config.pretrained` is set."""
    c.pretrained = ''


def adamw_recipe(c: ml_collections.ConfigDict, *, num_train: int, epochs: int,
                 warmup_epochs: int, base_lr: float, weight_decay: float,
                 grad_norm_clip: float, label_smoothing: float = 0.1) -> None:
    """Sets the epoch-based AdamW + cosine recipe of the Swin / ConvNeXt papers on `c`, counting
    steps of `c.batch` over `num_train` training examples."""
    c.total_steps = max(1, epochs * num_train // c.batch)
    c.warmup_steps = warmup_epochs * num_train // c.batch
    c.optimizer = 'adamw'
    c.b1, c.b2 = 0.9, 0.999
    c.base_lr = base_lr
    c.weight_decay = weight_decay
    c.decay_type = 'cosine'
    c.grad_norm_clip = grad_norm_clip
    c.label_smoothing = label_smoothing
