"""The family contract: what every model family's top-level module offers the trainer, the
weight loader and the evaluation code, declared once.

A family's top-level module is a flax `nn.Module` that also subclasses `Family` and has:
- dataclass fields `num_classes` (0: the pooled features), `img_size` (the side of the square
  images its parameters are built for), `in_chans` and `dtype` (one of `DTYPES`: the compute
  dtype; parameters stay float32, logits are float32);
- `__call__(images, *, train=False)`: images `[batch, img_size, img_size, in_chans]` -> logits
  `[batch, num_classes]`; submodules whose only train-time difference is dropout take
  `deterministic`, those with batch statistics or other train-time draws take `train`;
- the class attributes below: the RNG streams `apply` needs in training, the module paths
  holding stacked layers when the model is scanned (`scan_layers`; each one of
  `vit_jax.tree.STACKED_LAYERS`), the head's parameter names (re-initialised for another class
  count) and the family's default preprocessing (variants override parts of it in the
  registry: `get_spec(name).pretrained_cfg` is the variant's `Preprocessing`), and where its
  intermediate features are (`vit_jax.features`).

tests/test_families.py checks every registered model against this contract.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypedDict

from vit_jax.errors import ModelError
from vit_jax.normalization import NORMALIZATIONS

# Compute dtypes every family accepts (`dtype` option); parameters stay float32.
DTYPES = ('float32', 'bfloat16', 'float16')
# Dataclass fields every family's top-level module has.
FIELDS = ('num_classes', 'img_size', 'in_chans', 'dtype')


class Preprocessing(TypedDict, total=False):
    """How a variant's evaluation images are prepared (timm's `pretrained_cfg`): resize the
    shorter side to `input_size[0] / crop_pct` with `interpolation`, centre-crop
    `input_size` `(height, width, channels)`, normalise `(pixels / 255 - mean) / std`.
    `tag` names timm's default pretrained weights, where there are some."""

    input_size: tuple[int, int, int]
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tag: str


class Family:
    """Base of every family's top-level module; see the module docstring for the contract."""

    # RNG collections `apply(..., rngs=...)` needs in training.
    rng_streams: ClassVar[tuple[str, ...]] = ('dropout',)
    # Module paths (`Transformer/encoderblock`) holding `[layers, ...]` arrays when scanned.
    stacked_layers: ClassVar[tuple[str, ...]] = ()
    # Top-level parameter modules that map features to classes.
    head_names: ClassVar[tuple[str, ...]] = ('head',)
    # Evaluation preprocessing of the family's checkpoints (the original ViT's: [-1, 1]).
    default_preprocessing: ClassVar[Preprocessing] = Preprocessing(
        crop_pct=1.0, interpolation='bilinear', **NORMALIZATIONS['minus_one_one'])
    # Layer-wise depth (see `layer_depths`), as timm's `group_matcher`: parameters whose name
    # (`Transformer/encoderblock_3/...`, no collection) matches `stem_layers` are the
    # embedding; `block_layers` `(regex, suffix)` number the blocks by the regex's integer
    # groups then `suffix` (stages flattened); what neither matches (final norm, head) is last.
    stem_layers: ClassVar[str] = r'$^'
    block_layers: ClassVar[tuple[tuple[str, tuple[int, ...]], ...]] = ()

    # Modules (a regular expression over '/'-joined module paths) whose outputs are the
    # intermediate features, in call order: maps `[batch, h, w, channels]`, or token sequences
    # `[batch, num_prefix_tokens + h * w, channels]`; one entry per block or per stage.
    feature_modules: ClassVar[str] = ''
    # Tokens before the patch tokens in those sequences (class, distillation tokens).
    num_prefix_tokens: ClassVar[int] = 0
    # The final norm's module path, applied by `features(norm=True)` to the features of its
    # width; None where the family has no norm over feature maps.
    feature_norm: ClassVar[str | None] = None


def layer_depths(module: type[Family], names: Iterable[str]) -> dict[str, int]:
    """The depth of each parameter name (`Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel`,
    no collection, one name per layer of stacked layers): 0 for the embedding, `i + 1` for the
    `i`-th block in the order of `module.block_layers`' keys, `blocks + 1` for the rest."""
    names = list(names)
    stem, blocks = set(), {}
    for name in names:
        if re.match(module.stem_layers, name):
            stem.add(name)
            continue
        for pattern, suffix in module.block_layers:
            if match := re.match(pattern, name):
                blocks[name] = tuple(int(g) for g in match.groups() if g is not None) + suffix
                break
    order = {key: i + 1 for i, key in enumerate(sorted(set(blocks.values())))}
    last = len(order) + 1
    return {name: 0 if name in stem else order[blocks[name]] if name in blocks else last
            for name in names}


def check_family(module: type) -> None:
    """Raises `ModelError` unless `module` is a flax module class declaring the contract."""
    fields = getattr(module, '__dataclass_fields__', {})
    missing = [f for f in FIELDS if f not in fields]
    if not issubclass(module, Family) or missing:
        raise ModelError(f'{module.__name__} does not declare the family contract '
                         f'(vit_jax.models.contract.Family; missing fields: {missing})')


def check_choices(choices: Iterable[tuple[str, Any, Iterable[Any]]]) -> None:
    """Raises `ModelError` for the first `(option, value, allowed)` whose value is not allowed."""
    for option, value, allowed in choices:
        allowed = tuple(allowed)
        if value not in allowed:
            raise ModelError(f'{option}={value!r} is not supported; choose one of {allowed}')


def preprocessing(module: type[Family], img_size: int, in_chans: int,
                  overrides: Mapping[str, Any] | None = None) -> Preprocessing:
    """A variant's preprocessing: the family default, its input size, then `overrides`."""
    return Preprocessing(input_size=(img_size, img_size, in_chans),
                         **{**module.default_preprocessing, **(overrides or {})})
