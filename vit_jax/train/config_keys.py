"""Every key of a training config, declared once: its default, type, allowed values, whether a
relaunch of a run may change it, and one line of doc.

`base_config()` is built from `KEYS` (plus `model`, the model's options: `model_config`);
`validate` checks a config against them, then the rules that tie keys together; the run record
reads `MAY_CHANGE`, and the docs' config reference is `reference()`. A new key is one `Key` here
and the code that reads it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import ml_collections

from vit_jax.data import AUGMENTATIONS
from vit_jax.errors import ConfigError, ModelError
from vit_jax.models import registry
from vit_jax.normalization import NORMALIZATIONS
from vit_jax.train import distill, sharding
from vit_jax.train.step import LOSSES

# Set by the trainer from the data (class count) and `pp.crop` (image size).
DATA_DEFINED_OPTIONS = ('num_classes', 'img_size')

_INTERVAL = re.compile(r'^([\[(])\s*(\S+),\s*(\S+?)\s*([\])])$')


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key. `bounds`: `'> 0'`, `'>= 0'`, an interval `'[0, 1)'` (its text is what
    an error shows), or `'probability'` ([0, 1]); `note` is told with a bounds error; `kind` is
    the type of a key whose default is None (a value of it may be None)."""

    name: str
    default: Any
    doc: str
    kind: type | None = None
    choices: tuple[Any, ...] | None = None
    bounds: str | None = None
    note: str = ''
    may_change: bool = False

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def check(self, value: Any) -> None:
        """A one-line `ConfigError` when `value` is not allowed for this key."""
        flag = f'--config.{self.name}'
        if value is None and self.default is None:
            return
        if not _has_type(value, self.type):
            raise ConfigError(f'{flag}={value!r} must be a {self.type.__name__} ({self.doc})')
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f'{flag}={value!r} is not supported; choose one of {self.choices}')
        if self.bounds and not _within(value, self.bounds):
            note = f' ({self.note})' if self.note else ''
            if self.bounds == 'probability':
                raise ConfigError(f'{flag} is a probability: it must be in [0, 1], got {value!r}')
            rule = self.bounds if self.bounds[0] in '<>' else f'in {self.bounds}'
            raise ConfigError(f'{flag} must be {rule}{note}, got {value!r}')


def _has_type(value: Any, kind: type) -> bool:
    """Whether `value` is a `kind` (an int is a float; a bool is neither); any value passes
    for a structured kind (lists, tuples: their code checks them)."""
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and \
            not isinstance(value, bool)
    return kind not in (str, bool) or isinstance(value, kind)


def _within(value: Any, bounds: str) -> bool:
    if bounds == 'probability':
        return 0 <= value <= 1
    if bounds.startswith(('>', '<')):
        operator, limit = bounds.split()
        return {'>': value > float(limit), '>=': value >= float(limit),
                '<': value < float(limit), '<=': value <= float(limit)}[operator]
    left, low, high, right = _INTERVAL.match(bounds).groups()
    low, high = float(low), float(high)
    return (low <= value if left == '[' else low < value) and \
        (value <= high if right == ']' else value < high)


KEYS: tuple[Key, ...] = (
    Key('seed', 0, 'seed of the initialisation, the data order and every random draw'),
    Key('model_name', 'ViT-B_16', 'a registered model (vit_jax.list_models())'),
    Key('dataset', 'digits', "a tfds name (cifar10, imagenet2012, ...), 'digits' (embedded, "
        'offline) or a folder root/<split>/<class>/*.jpg|png of your own images'),
    Key('tfds_data_dir', None, 'where tfds datasets are prepared (a folder, gs:// or s3://)',
        kind=str, may_change=True),
    Key('pretrained', None, 'weights to start from: a path, a gs:// s3:// http(s):// URL or a '
        'published name (the head re-initialised for another class count, the position '
        'embedding resized); ignored when resuming. None: from scratch; "": must be given',
        kind=str, may_change=True),
    Key('init_from', None, "an earlier run's --workdir to start from: its newest checkpoint's "
        'variables, not its optimizer state; ignored when resuming', kind=str, may_change=True),
    Key('skip_bad_images', False, 'folder datasets: skip images that fail the start-up check '
        '(listed in skipped_images.txt) instead of stopping with the list', may_change=True),
    Key('pp.train', 'train', 'the training split (tfds split syntax: train[:98%])'),
    Key('pp.test', 'test', 'the evaluation split'),
    Key('pp.crop', 224, 'the side of the square images the model sees', bounds='> 0'),
    Key('pp.augment', 'inception', 'training crops: Inception crop, pad and crop, or none',
        choices=AUGMENTATIONS),
    Key('pp.area_min', 0.05, "the Inception crop's smallest area, a fraction of the image",
        bounds='(0, 1]'),
    Key('pp.pad', 0, "pad_crop's padding in pixels", bounds='>= 0'),
    Key('pp.flip', True, 'random horizontal flips in training'),
    Key('pp.normalize', 'minus_one_one', 'pixels to [-1, 1], or by the ImageNet mean / std',
        choices=tuple(NORMALIZATIONS)),
    Key('pp.randaug_layers', 0, 'RandAugment ops per training image (0 = off)', bounds='>= 0'),
    Key('pp.randaug_magnitude', 9, "RandAugment's magnitude", bounds='[0, 10]'),
    Key('pp.randaug_magnitude_std', 0.5, "std of the Gaussian noise on RandAugment's magnitude",
        bounds='>= 0'),
    Key('pp.erase_prob', 0.0, 'random erasing probability per training image',
        bounds='[0.0, 1.0]'),
    Key('pp.repeated_aug', 1, 'augmented copies of each training example per epoch',
        bounds='> 0'),
    Key('pp.eval_crop_pct', 1.0, 'evaluation: 1 resizes the whole image to crop; below 1 '
        '(DeiT: 0.875) resizes the shorter side to crop / eval_crop_pct, then centre-crops',
        bounds='[0.01, 1.0]'),
    Key('batch', 512, 'the global training batch, split over the data x fsdp devices and the '
        'accumulation steps', bounds='> 0'),
    Key('batch_eval', 512, 'the global evaluation batch', bounds='> 0', may_change=True),
    Key('mesh', [('data', -1), ('fsdp', 1)], "the device mesh [(axis, size)] over 'data', "
        "'fsdp' and 'model' (-1: the devices left over); see vit_jax/train/sharding.py",
        kind=list, may_change=True),
    Key('param_sharding', [('.*', 'fsdp')], "parameters and optimizer state go by the first "
        "(regex, 'replicate' | 'fsdp') rule their name matches", kind=list, may_change=True),
    Key('fsdp_min_size', 2 ** 14, 'arrays with fewer elements stay replicated',
        bounds='>= 0', may_change=True),
    Key('shuffle_buffer', 50_000, 'unused: the training stream reads a per-epoch permutation by '
        'index', may_change=True),
    Key('input_threads', 0, 'threads decoding and augmenting images (0 = os.cpu_count())',
        bounds='>= 0', may_change=True),
    Key('total_steps', 10_000, 'training steps', bounds='> 0', may_change=True),
    Key('accum_steps', 1, 'micro-batches accumulated per step', bounds='> 0',
        may_change=True),
    Key('optimizer', 'sgd', 'SGD with momentum, or AdamW', choices=('sgd', 'adamw')),
    Key('base_lr', 0.03, 'the peak learning rate', bounds='>= 0'),
    Key('momentum', 0.9, "SGD's momentum", bounds='[0, 1)'),
    Key('optim_dtype', 'float32', "dtype of SGD's momentum / Adam's moments ('bfloat16' as "
        'the original)', choices=('float32', 'bfloat16')),
    Key('b1', 0.9, "Adam's first-moment decay", bounds='[0, 1)'),
    Key('b2', 0.999, "Adam's second-moment decay", bounds='[0, 1)'),
    Key('weight_decay', 0.0, 'decoupled weight decay (AdamW) or L2 (SGD)', bounds='>= 0'),
    Key('decay_type', 'cosine', "the learning rate's decay after warm-up",
        choices=('cosine', 'linear', 'constant')),
    Key('warmup_steps', 500, 'linear warm-up steps', bounds='>= 0'),
    Key('warmup_lr', 0.0, "the warm-up's first learning rate (DeiT: 1e-6)", bounds='>= 0'),
    Key('min_lr', 0.0, "the decay's floor (DeiT: 1e-5)", bounds='>= 0'),
    Key('grad_norm_clip', 1.0, 'clip the global gradient norm to this (0 = off)',
        bounds='>= 0'),
    Key('layer_decay', 1.0, 'layer-wise learning-rate decay: depth d of L learns at '
        'decay^(L - d) x the rate', bounds='(0, 1]', note='1 = no decay; BEiT uses 0.65'),
    Key('label_smoothing', 0.0, 'label smoothing of the targets', bounds='[0, 1)'),
    Key('loss', 'softmax_xent', "softmax cross-entropy, or big_vision's sigmoid (independent "
        'binary targets, the head bias starting at -10)', choices=tuple(LOSSES)),
    Key('mixup_alpha', 0.0, "mixup's Beta(alpha, alpha) (0 = off; DeiT: 0.8)", bounds='>= 0'),
    Key('cutmix_alpha', 0.0, "CutMix's Beta(alpha, alpha) (0 = off; DeiT: 1.0)",
        bounds='>= 0'),
    Key('mix_prob', 1.0, 'probability that a batch is mixed', bounds='probability'),
    Key('mix_switch_prob', 0.5, 'probability of CutMix rather than mixup when both are on',
        bounds='probability'),
    Key('ema_decay', 0.0, 'moving average of the weights, evaluated beside them (0 = off)',
        bounds='[0, 1)', note='0 = no moving average; DeiT uses 0.99996'),
    Key('progress_every', 10, 'log the training loss every so many steps', bounds='>= 0',
        may_change=True),
    Key('eval_every', 100, 'evaluate every so many steps (0 = at the end only)',
        bounds='>= 0', may_change=True),
    Key('fewshot_every', 0, 'few-shot linear evaluation every so many steps and at the end '
        '(0 = off)', bounds='>= 0'),
    Key('fewshot_shots', (1, 5, 10, 25), 'the k training examples per class of each few-shot '
        'evaluation', kind=tuple),
    Key('fewshot_train', None, "the few-shot examples' split (default: pp.train)", kind=str),
    Key('distill.type', 'none', "DeiT's distillation: hard or soft targets, or none (off)",
        choices=distill.TYPES),
    Key('distill.alpha', 0.5, "the distillation term's weight", bounds='[0, 1]'),
    Key('distill.tau', 1.0, 'the soft temperature', bounds='> 0'),
    Key('teacher.model', None, "the teacher's registered model name", kind=str),
    Key('teacher.weights', None, "the teacher's weights (a file, URL or published name)",
        kind=str),
    Key('teacher.img_size', None, "the teacher's image size (default: its registered size)",
        kind=int, bounds='> 0'),
    Key('checkpoint_every', 1000, 'save a checkpoint every so many steps', bounds='>= 0',
        may_change=True),
    Key('keep_checkpoints', 3, 'the newest checkpoints kept', bounds='> 0', may_change=True),
)

# Keys a relaunch may change against the run record; every other key must equal it.
MAY_CHANGE = tuple(key.name for key in KEYS if key.may_change)


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
    """Every key of `KEYS` at its default, and `model` (ViT-B_16's options, all unset)."""
    c = ml_collections.ConfigDict()
    for key in KEYS:
        *parents, leaf = key.name.split('.')
        node = c
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node = node[parent]
        node[leaf] = (ml_collections.config_dict.placeholder(key.kind) if key.default is None
                      else key.default)
    c.model = model_config(c.model_name)
    return c


def _value(config: ml_collections.ConfigDict, name: str) -> Any:
    node = config
    for part in name.split('.'):
        node = node[part]
    return node


def _first_missing(config: ml_collections.ConfigDict, name: str) -> str | None:
    """The shortest part of the dotted `name` that `config` lacks (`pp` for `pp.crop` when it
    has no `pp`), or None."""
    node, parts = config, name.split('.')
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return '.'.join(parts[:depth + 1])
        node = node[part]
    return None


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line `ConfigError` for a value `KEYS` does not allow, or a combination of
    values that cannot work (`ModelError` for an unknown model), or a key it lacks."""
    missing = sorted({_first_missing(config, name) for name in [key.name for key in KEYS] +
                      ['model']} - {None})
    if missing:
        raise ConfigError(f'the config has no {", ".join(missing)}; build it on '
                          f'vit_jax.config.base_config(), as the packaged config files do')
    for key in KEYS:
        key.check(_value(config, key.name))
    _check_rules(config)
    sharding.check_rules(config.param_sharding)
    distill.check_config(config)
    registry.get_spec(config.model_name)


def _check_rules(c: ml_collections.ConfigDict) -> None:
    """A one-line `ConfigError` when `c`'s keys do not go together."""
    if c.batch % c.accum_steps:
        raise ConfigError(f'--config.batch={c.batch} is not divisible by '
                          f'--config.accum_steps={c.accum_steps}')
    if c.warmup_steps >= c.total_steps:
        raise ConfigError(f'--config.warmup_steps={c.warmup_steps} must be smaller than '
                          f'--config.total_steps={c.total_steps}')
    if c.pretrained == '':
        raise ConfigError('this config fine-tunes loaded weights: pass --config.pretrained=PATH '
                          '(an original or big_vision .npz, a timm .pth/.bin/.safetensors), a '
                          'URL or a published name (python -m vit_jax.hub --list)')
    shots = tuple(c.fewshot_shots)
    if not shots or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0
                            for k in shots):
        raise ConfigError(f'--config.fewshot_shots must be positive integers (examples per '
                          f'class), e.g. (1, 5, 10, 25); got {shots!r}')


def reference() -> str:
    """The config reference in Markdown: a table of every key."""
    lines = ['| key | default | allowed | relaunch may change | what it is |',
             '|---|---|---|---|---|']
    for key in KEYS:
        allowed = (' | '.join(f'`{c}`' for c in key.choices) if key.choices else
                   key.bounds or key.type.__name__)
        cells = [f'`{key.name}`', f'`{key.default!r}`', allowed,
                 'yes' if key.may_change else '', key.doc]
        lines.append('| ' + ' | '.join(cell.replace('|', '\\|') for cell in cells) + ' |')
    return '\n'.join(lines) + '\n'
