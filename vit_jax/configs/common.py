"""What the config files share: short model names (each family's `contract.ShortNames`), the
argument parser and DeiT's augmentation.

Config files import it as `from . import common` (`vit_jax.config.load_config` loads a folder of
config files as one package). `parse_arg` reads every `FILE.py:ARG` the same way, in the spirit
of big_vision's `parse_arg`: `configs/swin.py:tiny,cifar10,ft` is the same as
`configs/swin.py:model=tiny,dataset=cifar10,ft=true`.
"""

import types
from typing import Any

import ml_collections

from vit_jax.config import adamw_recipe, base_config, model_config, parse_bool, require_pretrained
from vit_jax.data import known
from vit_jax.errors import ConfigError
from vit_jax.models import families, get_spec, list_models

# The config files' families by lower-case label ('vit': configs/vit.py), each family's short
# names as its class declares them.
FAMILIES = types.MappingProxyType({
    f.short_names.label.lower(): f.short_names for f in families() if f.short_names})


def short_names(family: str) -> dict[str, str]:
    """Short name -> registered name, for every registered model of `family`."""
    names = [n for pattern in FAMILIES[family].patterns for n in list_models(pattern)]
    return {FAMILIES[family].short(n): n for n in names}


def model_name(family: str, name: str) -> str:
    """The registered name of `name`, a short name of `family` (`b16`, `tiny`, `r50_b16`) or
    one of its registered names."""
    shorts = short_names(family)
    if name in shorts.values():
        return name
    if name not in shorts:
        example = next(iter(shorts.values()))
        raise ConfigError(f'unknown model {name!r} for {FAMILIES[family].label}; choose one of '
                          f'{", ".join(shorts)} (or a registered name, e.g. {example})')
    return shorts[name]


def start(family: str, arg: types.SimpleNamespace, **model_options: Any
          ) -> ml_collections.ConfigDict:
    """`base_config()` training `arg.model` (a short or registered name of `family`) with
    `model_options` on `arg.dataset`, at the variant's input size (`pp.crop`)."""
    c = base_config()
    c.model_name = model_name(family, arg.model)
    c.model = model_config(c.model_name, **model_options)
    c.dataset = arg.dataset
    c.pp.crop = get_spec(c.model_name).pretrained_cfg['input_size'][0]
    return c


def paper_recipe(c: ml_collections.ConfigDict, *, ft: bool, scratch: dict[str, float],
                 fine_tune: dict[str, float], grad_norm_clip: float) -> None:
    """The Swin / ConvNeXt papers' recipe on `c` (its batch set): the original recipe's
    held-out split of `c.dataset`, ImageNet mean / std, and `adamw_recipe` with the `epochs`,
    `warmup_epochs`, `base_lr` and `weight_decay` of `fine_tune` (`ft`: weights must then be
    given) or `scratch`."""
    dataset = known.dataset(c.dataset)
    c.pp.train, num_train = dataset.train_split(holdout=True)
    c.pp.test = dataset.test
    c.pp.normalize = 'imagenet'  # the papers' (and the timm weights') mean / std
    c.batch_eval = 512
    adamw_recipe(c, num_train=num_train, grad_norm_clip=grad_norm_clip,
                 **(fine_tune if ft else scratch))
    if ft:
        require_pretrained(c)


def parse_arg(arg: str | None, **spec: str | bool) -> types.SimpleNamespace:
    """Reads a config file's `ARG` into the keys of `spec` (their defaults).

    `ARG` is comma-separated: `key=value` sets a key; a bare word that names a bool key sets it
    (`ft`); any other bare word is the value of the str key at its place (`b16,cifar10`). An
    empty item or value keeps the key's default. Raises a one-line `ConfigError` for anything else.
    """
    values, positional = dict(spec), [k for k, v in spec.items() if isinstance(v, str)]
    given = set()
    for i, item in enumerate((arg or '').split(',')):
        if not item:
            continue
        key, eq, text = item.partition('=')
        if not eq:
            if item in spec and isinstance(spec[item], bool):
                key, text = item, 'true'
            elif i < len(positional):
                key, text = positional[i], item
            else:
                raise _bad_arg(arg, f'{item!r} is one value too many', spec)
        if key not in spec:
            raise _bad_arg(arg, f'{key!r} is not one of its keys', spec)
        if key in given:
            raise _bad_arg(arg, f'{key!r} is given twice', spec)
        given.add(key)
        if isinstance(spec[key], bool):
            try:
                values[key] = parse_bool(text)
            except ValueError:
                raise _bad_arg(arg, f'{key}={text!r} is not true or false', spec) from None
        elif text:
            values[key] = text
    return types.SimpleNamespace(**values)


def _bad_arg(arg: str, problem: str, spec: dict[str, str | bool]) -> ConfigError:
    positional = ','.join(k.upper() for k, v in spec.items() if isinstance(v, str))
    flags = ''.join(f'[,{k}]' for k, v in spec.items() if isinstance(v, bool))
    keys = ','.join(f'{k}=...' for k, v in spec.items() if isinstance(v, str))
    keys += ''.join(f'[,{k}=true]' for k, v in spec.items() if isinstance(v, bool))
    return ConfigError(f'config argument {arg!r}: {problem}; pass {positional}{flags} or '
                       f'{keys}')



def deit_augment(c) -> None:
    """Sets DeiT's training augmentation on config `c`: RandAugment rand-m9-mstd0.5-inc1, random
    erasing 0.25, repeated augmentation (3 copies), mixup 0.8 / CutMix 1.0 and an EMA of the
    weights (0.99996)."""
    c.pp.update(randaug_layers=2, randaug_magnitude=9, randaug_magnitude_std=0.5,
                erase_prob=0.25, repeated_aug=3)
    c.mixup_alpha, c.cutmix_alpha, c.ema_decay = 0.8, 1.0, 0.99996
