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
  count), the family's default preprocessing (variants override parts of it in the
  registry: `get_spec(name).pretrained_cfg` is the variant's `Preprocessing`), where its
  intermediate features are (`vit_jax.features`), the parameters that take no weight decay,
  how its parameters split over the mesh's `model` axis (`Split`), the config files' short
  names of its variants (`ShortNames`) and how it reads foreign checkpoints (`checkpoints()`).

The optimizer, the sharding, the config files and the weight loader read these from the
registry; no table elsewhere names a family's parameters. tests/test_families.py checks every
registered model against this contract.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import tree
from vit_jax.errors import ModelError
from vit_jax.models.convert import Flat
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


class Split(NamedTuple):
    """A tensor-parallel rule: parameters whose name (`params/Transformer/encoderblock_0/...`,
    or the optimizer's copy) the regular expression `pattern` finds are split over the mesh's
    `model` axis on dimension `dim` (counted after a stacked layer axis), which holds `what`
    (for error messages); `dim=None` keeps them whole on every device of a model group."""

    pattern: str
    dim: int | None = None
    what: str = ''


def attention_splits(module: str) -> tuple[Split, ...]:
    """Megatron-LM's split of a `layers.MultiHeadAttention` at module paths `module` (a regular
    expression): `query`, `key` and `value` on their heads, `out` on its input heads."""
    return (Split(rf'/{module}/(query|key|value)/kernel$', 1, 'heads'),  # [dim, heads, head_dim]
            Split(rf'/{module}/(query|key|value)/bias$', 0, 'heads'),  # [heads, head_dim]
            Split(rf'/{module}/out/kernel$', 0, 'heads'),  # [heads, head_dim, dim]
            Split(rf'/{module}/out/bias$'))


def mlp_splits(module: str) -> tuple[Split, ...]:
    """Megatron-LM's split of a `layers.MlpBlock` at module paths `module` (a regular
    expression): `Dense_0` on its output, `Dense_1` on its input (the MLP's hidden units)."""
    return (Split(rf'/{module}/Dense_0/kernel$', 1, 'MLP width'),  # [dim, hidden]
            Split(rf'/{module}/Dense_0/bias$', 0, 'MLP width'),  # [hidden]
            Split(rf'/{module}/Dense_1/kernel$', 0, 'MLP width'),  # [hidden, out]
            Split(rf'/{module}/Dense_1/bias$'))


def replicated(*modules: str) -> tuple[Split, ...]:
    """Every parameter under module paths `modules` (regular expressions) kept whole."""
    return tuple(Split(rf'/{module}/') for module in modules)


@dataclasses.dataclass(frozen=True)
class ShortNames:
    """How the config files name a family's variants: `configs/<label.lower()>.py:MODEL` takes
    `short(name)` for every registered name matching the shell-style `patterns` (listed in
    their order in messages; they may name another family's variants that its config file
    trains too); `label` names the family in messages (`'ViT'`)."""

    label: str
    patterns: tuple[str, ...]
    short: Callable[[str], str]


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """How a family reads foreign checkpoints and writes Hugging Face ones (timm's
    `checkpoint_filter_fn`).

    `convert(arrays, model)` maps a checkpoint's flat arrays to the model's flat keys, or returns
    None when it does not recognise the layout (None: the family reads its own names only).
    `resize(key, array, shape, model)` adapts an array whose shape differs (e.g. a position
    embedding trained at another resolution) or returns None. `layouts` names the accepted
    layouts in error messages. Both see one key per layer of a scanned model (the family's
    `stacked_layers`); `vit_jax.weights` stacks and unstacks.

    `hf_model_types` are the Hugging Face `transformers` `model_type`s the family builds;
    `hf_options(config, names)` turns a `config.json` (and the directory's array names) into
    the module's keyword arguments, raising `ModelError` for what the family cannot build.
    `to_hf(model, flat_params)`, where the family writes Hugging Face weights, returns the
    `config.json` contents and the hub-named PyTorch-layout arrays.
    """

    convert: Callable[[Flat, Any], Flat | None] | None = None
    resize: Callable[[str, np.ndarray, tuple[int, ...], Any], np.ndarray | None] | None = None
    layouts: str = ''
    hf_model_types: tuple[str, ...] = ()
    hf_options: Callable[[dict[str, Any], frozenset[str]], dict[str, Any]] | None = None
    to_hf: Callable[[Any, Flat], tuple[dict[str, Any], Flat]] | None = None


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

    # Parameters with more than one axis that take no weight decay (timm's `no_weight_decay`):
    # regular expressions searched in the name; biases, norms and layer scales never take it.
    no_weight_decay: ClassVar[tuple[str, ...]] = ()
    # How every parameter splits over the mesh's `model` axis: the first `Split` whose pattern
    # the name holds decides; every parameter must meet one (`uncovered`).
    model_splits: ClassVar[tuple[Split, ...]] = ()
    # The config files' short names of the variants (of one family: the config file's).
    short_names: ClassVar[ShortNames | None] = None

    @staticmethod
    def checkpoints() -> Checkpoints:
        """How the family reads foreign checkpoints (a method, so that the mapping may follow
        the class in its file)."""
        return Checkpoints()


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


def split_of(module: type[Family], name: str) -> Split | None:
    """The first of `module.model_splits` that `name` meets, or None."""
    return next((s for s in module.model_splits if re.search(s.pattern, name)), None)


def uncovered(module: type[Family], shapes: Mapping[str, Any]) -> list[str]:
    """The parameters of `shapes` (flat `vit_jax.tree` names -> arrays or shapes, e.g.
    `vit_jax.weights.model_shapes`) that `module.model_splits` does not cover. A parameter is
    covered when the first split it meets keeps it whole or splits a dimension it has (after a
    stacked layer axis); one that meets none is not."""
    out = []
    for name, value in shapes.items():
        if name.startswith('params/'):
            split = split_of(module, name)
            rank = len(value.shape) - tree.layer_axes(name)
            if split is None or (split.dim is not None and split.dim >= rank):
                out.append(name)
    return out


def init(model: Family, rng: jax.Array) -> dict[str, Any]:
    """The model's variables initialised from `rng` on one image of zeros `[1, img_size,
    img_size, in_chans]` (their shapes, under `jax.eval_shape`)."""
    images = jnp.zeros((1, model.img_size, model.img_size, model.in_chans), jnp.float32)
    return model.init(rng, images, train=False)


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
