"""Config files and command-line overrides.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`, named as
`path/to/file.py[:arg]` (e.g. `configs/vit.py:b16,cifar10`), then changed key by key with
`--config.key=value`. Every mistake is a `ConfigError` of one line naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
import types
import typing
from collections.abc import Iterable
from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference

from vit_jax.errors import ConfigError, ModelError, VitJaxError
from vit_jax.models import registry
from vit_jax.normalization import NORMALIZATIONS
from vit_jax.train import distill
from vit_jax.train.step import LOSSES

# The config files shipped with the package: `--config=configs/NAME.py` names them.
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')

# Set by the trainer from the data (class count) and `pp.crop` (image size).
DATA_DEFINED_OPTIONS = ('num_classes', 'img_size')


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


def _missing_keys(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
                  prefix: str = '') -> list[str]:
    """The dotted keys of `base` that `config` lacks (the model's options may differ)."""
    missing = []
    for key, value in base.items():
        if key not in config:
            missing.append(prefix + key)
        elif isinstance(value, ml_collections.ConfigDict) and key != 'model' and \
                isinstance(config[key], ml_collections.ConfigDict):
            missing += _missing_keys(config[key], value, f'{prefix}{key}.')
    return missing


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
            if text.lower() in ('true', '1', 'yes'):
                return True
            if text.lower() in ('false', '0', 'no'):
                return False
            raise ValueError(text)
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


def model_config(name: str, **values: Any) -> ml_collections.ConfigDict:
    """`config.model` for model `name`: every option as a typed field, unset (None) unless given.

    Unset options keep the registered variant's value; `num_classes` and `img_size` come from
    the data, so they are not here.
    """
    spec = registry.get_spec(name)
    hints = typing.get_type_hints(spec.module)
    fields = {}
    for field in dataclasses.fields(spec.module):
        if field.name in registry.NOT_OPTIONS or field.name in DATA_DEFINED_OPTIONS:
            continue
        fields[field.name] = ml_collections.config_dict.placeholder(_base_type(hints[field.name]))
    config = ml_collections.ConfigDict(fields)
    for key, value in values.items():
        if key not in fields:
            raise ModelError(f'model {name!r} has no option {key!r}')
        config[key] = value
    return config


def _base_type(hint: Any) -> type:
    """`int | None` -> int; `tuple[int, int]` -> tuple; `str` -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0] if len(args) == 1 else object
    return typing.get_origin(hint) or hint


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The options set in `config.model` (unset ones keep the variant's value)."""
    return {k: v for k, v in config.model.items() if v is not None}


def base_config() -> ml_collections.ConfigDict:
    """Training defaults shared by every config file (the original fine-tune recipe's names)."""
    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model_name = 'ViT-B_16'
    c.model = model_config('ViT-B_16')
    # A tfds name (cifar10, imagenet2012, ...), 'digits' (embedded, offline) or a folder
    # root/<split>/<class>/*.jpg|png of one's own images.
    c.dataset = 'digits'
    c.tfds_data_dir = placeholder(str)
    # Weights to start from (any layout `vit_jax.weights.load` reads: the original or big_vision
    # .npz, timm .pth/.bin/.safetensors), as a path, a gs:// s3:// http(s):// URL or a published
    # name such as imagenet21k/ViT-B_16 (downloaded once into the cache); the head is
    # re-initialised when the class count differs and the position embedding resized to the
    # crop. Ignored when resuming a checkpoint. None: from scratch; '' (set by
    # `require_pretrained`): weights must be given.
    c.pretrained = placeholder(str)
    # The --workdir of an earlier run to start from: its newest checkpoint's parameters, BatchNorm
    # statistics and moving average, not its optimizer state (to continue with another optimizer
    # or recipe in a new workdir). Ignored when resuming a checkpoint.
    c.init_from = placeholder(str)
    # Folder datasets: skip images that fail the start-up check (listed in the workdir's
    # skipped_images.txt) instead of stopping with the list.
    c.skip_bad_images = False
    c.pp = ml_collections.ConfigDict(dict(
        train='train', test='test', crop=224,
        augment='inception',  # 'inception' | 'pad_crop' | 'none'
        area_min=0.05, pad=0, flip=True,
        normalize='minus_one_one',  # 'minus_one_one' ([-1, 1]) | 'imagenet' (mean / std)
        # Training only (vit_jax/data): RandAugment ops per image (0 = off) at magnitude
        # 0..10 with Gaussian noise of this std, random erasing probability, copies per example.
        randaug_layers=0, randaug_magnitude=9, randaug_magnitude_std=0.5, erase_prob=0.0,
        repeated_aug=1,
        # Evaluation: 1 resizes the whole image to `crop`; below 1 (DeiT: 0.875) resizes the
        # shorter side to crop / eval_crop_pct, then cuts out the centre crop.
        eval_crop_pct=1.0))
    c.batch = 512  # global: split over the data x fsdp devices and accumulation steps
    c.batch_eval = 512
    # Device mesh [(axis, size)] over 'data', 'fsdp' and 'model' (tensor parallelism; -1: the
    # devices left over); parameters and optimizer state go by the first (regex, 'replicate' |
    # 'fsdp') rule their name matches, arrays below fsdp_min_size elements stay replicated;
    # attention and MLP arrays split over 'model' by name. See vit_jax/train/sharding.py.
    c.mesh = [('data', -1), ('fsdp', 1)]
    c.param_sharding = [('.*', 'fsdp')]
    c.fsdp_min_size = 2 ** 14
    # Unused: the train stream reads a per-epoch permutation by index (vit_jax/data/pipeline.py).
    c.shuffle_buffer = 50_000
    # Threads decoding and augmenting images (tf.data); 0 = os.cpu_count().
    c.input_threads = 0
    c.total_steps = 10_000
    c.accum_steps = 1
    c.optimizer = 'sgd'  # 'sgd' (momentum) | 'adamw'
    c.base_lr = 0.03
    c.momentum = 0.9
    c.optim_dtype = 'float32'  # SGD momentum / Adam moments dtype ('bfloat16' as the original)
    c.b1 = 0.9
    c.b2 = 0.999
    c.weight_decay = 0.0
    c.decay_type = 'cosine'  # 'cosine' | 'linear' | 'constant'
    c.warmup_steps = 500
    # The schedule's first learning rate (warm-up from it to base_lr) and its floor (the decay
    # ends there): DeiT's 1e-6 and 1e-5.
    c.warmup_lr = 0.0
    c.min_lr = 0.0
    c.grad_norm_clip = 1.0
    # Layer-wise learning-rate decay (BEiT / MAE fine-tuning, e.g. 0.65): a parameter at depth d
    # of L (embedding 0, block i at i + 1, head L) learns at decay^(L - d) x the rate; 1 = off.
    c.layer_decay = 1.0
    c.label_smoothing = 0.0
    # 'softmax_xent' | 'sigmoid_xent' (big_vision's i21k loss: independent binary targets, the
    # head's bias starting at -10); both take label smoothing and mixup's soft targets.
    c.loss = 'softmax_xent'
    # Mixup / CutMix on device, one draw per batch (timm's Mixup, mode 'batch'; DeiT: 0.8, 1.0,
    # 1.0, 0.5); 0 alphas = off. See vit_jax/train/mix.py.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.mix_prob = 1.0  # probability that a batch is mixed
    c.mix_switch_prob = 0.5  # probability of CutMix rather than mixup when both are on
    # Exponential moving average of the weights, evaluated beside them (DeiT: 0.99996); 0 = off.
    c.ema_decay = 0.0
    c.progress_every = 10
    c.eval_every = 100
    # Few-shot linear evaluation (big_vision's `fewshot`; vit_jax/train/fewshot.py) every
    # `fewshot_every` steps and at the end (0 = off): a ridge regression on the pre-logit
    # features of k training examples per class, for each k of `fewshot_shots`, drawn from the
    # split `fewshot_train` (default `pp.train`; e.g. 'train[:10000]' for a large split) and
    # scored on `pp.test`; logged as `fewshot_k{k}`.
    c.fewshot_every = 0
    c.fewshot_shots = (1, 5, 10, 25)
    c.fewshot_train = placeholder(str)
    # DeiT's distillation (vit_jax/train/distill.py): `type` 'hard' | 'soft' | 'none' (off),
    # `alpha` the distillation term's weight, `tau` the soft temperature; the teacher is a
    # registered model with the weights `teacher.weights` (a file, URL or published name; frozen,
    # evaluation mode), fed the student's images resized to `teacher.img_size` (default: its
    # registered size).
    c.distill = ml_collections.ConfigDict(dict(type='none', alpha=0.5, tau=1.0))
    c.teacher = ml_collections.ConfigDict(dict(model=placeholder(str), weights=placeholder(str),
                                               img_size=placeholder(int)))
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    return c


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


_CHOICES = {
    'optimizer': ('sgd', 'adamw'),
    'loss': tuple(LOSSES),
    'decay_type': ('cosine', 'linear', 'constant'),
    'optim_dtype': ('float32', 'bfloat16'),
    'pp.augment': ('inception', 'pad_crop', 'none'),
    'pp.normalize': tuple(NORMALIZATIONS),
}
_POSITIVE = ('batch', 'batch_eval', 'total_steps', 'accum_steps', 'pp.crop', 'keep_checkpoints',
             'pp.repeated_aug')
_NON_NEGATIVE = ('base_lr', 'warmup_lr', 'min_lr', 'warmup_steps', 'weight_decay',
                 'label_smoothing', 'progress_every', 'eval_every', 'checkpoint_every',
                 'grad_norm_clip', 'pp.pad', 'fsdp_min_size', 'input_threads',
                 'pp.randaug_layers', 'pp.randaug_magnitude_std', 'mixup_alpha', 'cutmix_alpha',
                 'fewshot_every')
# Inclusive ranges.
_RANGES = {'pp.randaug_magnitude': (0, 10), 'pp.erase_prob': (0.0, 1.0),
           'pp.eval_crop_pct': (0.01, 1.0)}
_PROBABILITIES = ('mix_prob', 'mix_switch_prob')


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line `ConfigError` for a value that cannot work, or a key missing."""
    missing = _missing_keys(config, base_config())
    if missing:
        raise ConfigError(f'the config has no {", ".join(missing)}; build it on '
                          f'vit_jax.config.base_config(), as the packaged config files do')
    def get(key: str) -> Any:
        node = config
        for part in key.split('.'):
            node = node[part]
        return node

    for key, allowed in _CHOICES.items():
        if get(key) not in allowed:
            raise ConfigError(f'--config.{key}={get(key)!r} is not supported; choose one of '
                              f'{allowed}')
    for key in _POSITIVE:
        if get(key) is None or get(key) <= 0:
            raise ConfigError(f'--config.{key} must be > 0, got {get(key)!r}')
    for key in _NON_NEGATIVE:
        if get(key) is not None and get(key) < 0:
            raise ConfigError(f'--config.{key} must be >= 0, got {get(key)!r}')
    for key, (low, high) in _RANGES.items():
        if not low <= get(key) <= high:
            raise ConfigError(f'--config.{key} must be in [{low}, {high}], got {get(key)!r}')
    if config.batch % config.accum_steps:
        raise ConfigError(f'--config.batch={config.batch} is not divisible by '
                          f'--config.accum_steps={config.accum_steps}')
    if config.warmup_steps >= config.total_steps:
        raise ConfigError(f'--config.warmup_steps={config.warmup_steps} must be smaller than '
                          f'--config.total_steps={config.total_steps}')
    for key in _PROBABILITIES:
        if not 0.0 <= get(key) <= 1.0:
            raise ConfigError(f'--config.{key} is a probability: it must be in [0, 1], got '
                              f'{get(key)!r}')
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f'--config.ema_decay must be in [0, 1) (0 = no moving average; DeiT '
                          f'uses 0.99996), got {config.ema_decay!r}')
    if not 0.0 < config.layer_decay <= 1.0:
        raise ConfigError(f'--config.layer_decay must be in (0, 1] (1 = no decay; BEiT uses '
                          f'0.65), got {config.layer_decay!r}')
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f'--config.label_smoothing must be in [0, 1), got '
                          f'{config.label_smoothing}')
    if config.pretrained == '':
        raise ConfigError('this config fine-tunes loaded weights: pass --config.pretrained=PATH '
                          '(an original or big_vision .npz, a timm .pth/.bin/.safetensors), a URL '
                          'or a published name (python -m vit_jax.hub --list)')
    distill.check_config(config)
    shots = tuple(config.fewshot_shots)
    if not shots or not all(isinstance(k, int) and k > 0 for k in shots):
        raise ConfigError(f'--config.fewshot_shots must be positive integers (examples per '
                          f'class), e.g. (1, 5, 10, 25); got {shots!r}')
    registry.get_spec(config.model_name)
