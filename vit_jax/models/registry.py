"""One registry for every model family: `create_model(name, **overrides)`, `list_models()`, and
`families()`, whose classes declare each family's facts (`contract.Family`).

Each family file registers its variants with `register(...)`; a variant is a module class
declaring the family contract plus keyword arguments plus the preprocessing it expects
(`contract.Preprocessing`: input size, crop, interpolation, mean, std), so evaluation never
has to guess them.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from vit_jax.errors import ModelError
from vit_jax.models import contract

NOT_OPTIONS = ('parent', 'name')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: module class, its keyword arguments and its preprocessing."""

    name: str
    module: type[contract.Family]
    kwargs: Mapping[str, Any]
    pretrained_cfg: contract.Preprocessing


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, module: type[nn.Module], pretrained_cfg: Mapping[str, Any] | None = None,
             **kwargs: Any) -> None:
    """Registers variant `name` = `module(**kwargs)`; `pretrained_cfg` overrides parts of the
    family's `default_preprocessing`."""
    if name in _REGISTRY:
        raise ValueError(f'model {name!r} is registered twice')
    contract.check_family(module)
    _check_options(name, module, kwargs)
    options = {f.name: f.default for f in dataclasses.fields(module)} | kwargs
    cfg = contract.preprocessing(module, options['img_size'], options['in_chans'],
                                 pretrained_cfg)
    _REGISTRY[name] = ModelSpec(name, module, dict(kwargs), cfg)


def list_models(pattern: str = '*') -> list[str]:
    """Sorted names of the registered models matching the shell-style `pattern`."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_spec(name: str) -> ModelSpec:
    """The registered `ModelSpec` of `name`; an unknown name lists the close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f'did you mean {", ".join(close)}?' if close else 'see vit_jax.list_models()'
        raise ModelError(f'unknown model {name!r}; {hint}')
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """Every option of model `name` with its value for that variant (defaults filled in)."""
    spec = get_spec(name)
    options = {f.name: f.default for f in dataclasses.fields(spec.module)
               if f.name not in NOT_OPTIONS and f.default is not dataclasses.MISSING}
    return {**options, **spec.kwargs}


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the registered model `name`, with timm-style `overrides` of its options.

    Example: `create_model('ViT-B_16', num_classes=10, img_size=384, drop_path_rate=0.1)`.
    The module's `apply(variables, images, train=False)` maps images
    `[batch, height, width, 3]` to logits `[batch, num_classes]`.
    """
    spec = get_spec(name)
    if 'pretrained' in overrides:
        raise ModelError(f'create_model builds the module alone (flax keeps the variables '
                         f'apart); model, variables = vit_jax.pretrained({name!r}) loads its '
                         f'published weights')
    _check_options(name, spec.module, overrides)
    return spec.module(**{**spec.kwargs, **overrides})


def families() -> list[type[contract.Family]]:
    """The module class of every registered family, in the order they registered."""
    return list(dict.fromkeys(spec.module for spec in _REGISTRY.values()))


def _check_options(name: str, module: type[nn.Module], options: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(module) if f.name not in NOT_OPTIONS]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f'did you mean {" or ".join(map(repr, close))}? ' if close else ''
            raise ModelError(f'model {name!r} has no option {key!r}; {hint}'
                             f'options are: {", ".join(sorted(valid))}')
