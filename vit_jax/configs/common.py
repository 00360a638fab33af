"""What the config files share: short model names, the argument parser and
DeiT's augmentation.

Config files import it as `from . import common` (`vit_jax.config.load_config` loads a folder of
config files as one package). `parse_arg` reads every `FILE.py:ARG` the same way, in the spirit
of big_vision's `parse_arg`: `configs/swin.py:tiny,cifar10,ft` is the same as
`configs/swin.py:model=tiny,dataset=cifar10,ft=true`.
"""

import dataclasses
import re
import types
from collections.abc import Callable

from vit_jax.errors import ConfigError
from vit_jax.models import list_models

_SRET_SIZES = {'T': 'tiny', 'LT': 'light_tiny', 'S': 'small'}


@dataclasses.dataclass(frozen=True)
class Family:
    """The registered names of one family (glob `patterns`) and the rule giving each its short
    name."""
    label: str
    patterns: tuple[str, ...]
    short: Callable[[str], str]


def _vit_short(name: str) -> str:
    """Lower case without `ViT-` and the size's `_` (`ViT-B_16` -> `b16`); the G of ViT-G keeps
    its case, as big_vision's g/14 and G/14 are two sizes."""
    short = name.replace('ViT-', '').replace('+', '_')
    return re.sub(r'([a-zA-Z])_(\d)', r'\1\2', short if short.startswith('G_') else short.lower())


FAMILIES = types.MappingProxyType({
    # ViT-B_16 -> b16, ViT-Ti_16-gap-norep -> ti16-gap-norep, R50+ViT-B_16 -> r50_b16,
    # ViT-g_14 -> g14 and ViT-G_14 -> G14 (big_vision's two giants); the BiT
    # ResNets and `testing` keep their registered names.
    'vit': Family('ViT', ('ViT-*', 'R*+ViT-*', 'BiT-*', 'testing'),
                  lambda n: _vit_short(n) if 'ViT-' in n else n),
    # swin_tiny_patch4_window7_224 -> tiny, swin_base_patch4_window12_384 -> base384.
    'swin': Family('Swin', ('swin_*',),
                   lambda n: n.split('_')[1] + n.split('_')[-1].replace('224', '')),
    'convnext': Family('ConvNeXt', ('convnext_*',), lambda n: n.removeprefix('convnext_')),
    'dhvt': Family('DHVT', ('dhvt_*',), lambda n: n.removeprefix('dhvt_')),
    # SReT_T -> tiny, SReT_LT_wo_slice -> light_tiny_wo_slice, SReT_S_distill -> small_distill.
    'sret': Family('SReT', ('SReT_*',),
                   lambda n: '_'.join([_SRET_SIZES[n.split('_')[1]], *n.split('_')[2:]])),
})


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


_TRUE, _FALSE = ('true', '1', 'yes'), ('false', '0', 'no')


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
            if text.lower() not in _TRUE + _FALSE:
                raise _bad_arg(arg, f'{key}={text!r} is not true or false', spec)
            values[key] = text.lower() in _TRUE
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
