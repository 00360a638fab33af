"""Checkpoint import and export for every family: `load(model, source)`, `pretrained(name)`,
`save_npz`, `save_hf`.

`source` is a path (`.npz` in the original or big_vision layout, a PyTorch state dict as `.pth`,
`.pt`, `.bin` or `.safetensors`, a Hugging Face `save_pretrained` directory with `config.json`),
a URL of such a file (`gs://`, `s3://`, `http(s)://`) or a published checkpoint's name
(`vit_jax.catalogue`; both downloaded once into a checked cache), or an in-memory mapping of arrays.
`hf_model(directory)` builds the model a Hugging Face directory's `config.json` describes (the
registered family whose `checkpoints()` names its `model_type`). `load` reads it into flat
arrays, lets the model's family map foreign names onto its own (`contract.Checkpoints`,
declared on the family's class with the mapping in its file, as timm keeps a
`checkpoint_filter_fn` beside each model), resizes what the family knows how to resize
(position embeddings, relative position bias tables), re-initialises a head (the family's
declared `head_names`) whose class count differs, and checks every name and shape against the
model.

Flat keys are `vit_jax.tree` names: '/'-joined paths that start with the variable collection,
`params/Transformer/encoder_norm/scale`, `batch_stats/stem/bn/mean`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vit_jax import catalogue, storage, tree
from vit_jax.errors import ModelError
from vit_jax.models import contract, registry
from vit_jax.models.convert import Flat

log = logging.getLogger(__name__)

COLLECTIONS = ('params', 'batch_stats')
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# Keys under which training scripts nest the state dict (timm, DeiT, Swin, ConvNeXt, DHVT, SReT).
NESTING_KEYS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')
# Weight files of a Hugging Face directory, in the order they are looked for (one file, or the
# index of a sharded one).
HF_WEIGHTS = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
              'pytorch_model.bin.index.json')


# ----------------------------------------------------------------------------- reading files


def read(source: str | os.PathLike | Mapping[str, Any]) -> Flat:
    """Reads a checkpoint (a path, URL, published name or mapping: see the module docstring)
    into flat numpy arrays keyed by '/'-joined (or PyTorch '.') names.

    Nested mappings are flattened with '/'; a state dict nested under 'model', 'state_dict' or
    'module' (as training scripts save it) is unwrapped, and DataParallel's 'module.' prefix is
    dropped.
    """
    if isinstance(source, Mapping):
        return _flatten(_unwrap(source))
    path = catalogue.resolve(source)
    if os.path.isdir(path):
        return _read_hf_directory(path)
    if not os.path.isfile(path):
        raise ModelError(f'weights file {path!r} does not exist; give a file, a URL or a '
                         f'published name (python -m vit_jax.hub --list)')
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == '.npz' or (suffix not in TORCH_SUFFIXES and _is_npz(path)):
            with np.load(path, allow_pickle=False) as f:
                return {k: np.asarray(f[k]) for k in f.files}
        if suffix == '.safetensors':
            from safetensors.numpy import load_file
            return dict(load_file(path))
        return _flatten(_unwrap(_torch_load(path)))
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 -- any reader failure means: not a checkpoint
        raise ModelError(
            f'{path!r} is not a checkpoint vit_jax can read ({type(e).__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""}); expected an .npz, a PyTorch state dict '
            f'(.pth, .pt, .bin) or .safetensors') from None


def _read_hf_directory(path: str) -> Flat:
    """The weights of a Hugging Face `save_pretrained` directory (sharded or not)."""
    name = next((n for n in HF_WEIGHTS if os.path.isfile(os.path.join(path, n))), None)
    if name is None:
        raise ModelError(f'{path!r} is a directory without Hugging Face weights (one of '
                         f'{", ".join(HF_WEIGHTS)}); pass a weights file or a save_pretrained '
                         f'directory')
    if not name.endswith('.index.json'):
        return read(os.path.join(path, name))
    index = os.path.join(path, name)
    contents = _read_json(index)
    weight_map = contents.get('weight_map') if isinstance(contents, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) for f in weight_map.values()):
        raise ModelError(f'{index!r} has no weight_map of array names to shard files; save the '
                         f'model again, or pass one of its shards')
    shards = sorted(set(weight_map.values()))
    outside = [f for f in shards if os.path.isabs(f) or os.path.normpath(f).startswith('..')]
    if outside:
        raise ModelError(f'{index!r} names shard files outside its directory ({outside[0]!r}); '
                         f'a save_pretrained directory keeps its shards beside the index')
    return {k: v for shard in shards for k, v in read(os.path.join(path, shard)).items()}


def _read_json(path: str) -> Any:
    """The JSON file `path` of a Hugging Face directory; a `ModelError` when it is none."""
    try:
        with open(path, 'rb') as f:
            return json.loads(f.read())
    except ValueError as e:  # not JSON, or not UTF-8
        raise ModelError(f'{path!r} is not valid JSON ({e}); download or save the model '
                         f'again') from None


def _is_npz(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith('.npy') for n in z.namelist())


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ModelError(f'reading the PyTorch checkpoint {path!r} needs torch: '
                         f'pip install torch (or convert it to .safetensors)') from None
    # DeiT-style training scripts (DHVT, SReT, ...) save their argparse options beside the model.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _unwrap(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in NESTING_KEYS:
        if isinstance(tree.get(key), Mapping) and not any(
                _is_array(v) for v in tree.values()):
            return _unwrap(tree[key])
    if tree and all(k.startswith('module.') for k in tree):
        return {k[len('module.'):]: v for k, v in tree.items()}
    return tree


def _is_array(value: Any) -> bool:
    return hasattr(value, 'shape') and hasattr(value, 'dtype')


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, 'detach'):  # torch.Tensor; bfloat16 has no numpy dtype
        value = value.detach().cpu()
        if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
            return value.numpy()
        return value.float().numpy()
    return np.asarray(value)


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> Flat:
    flat: Flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + '/'))
        elif _is_array(value) or isinstance(value, (int, float)):
            flat[name] = _to_numpy(value)
    return flat


# ----------------------------------------------------------------------------- loading


def model_shapes(model: nn.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """The model's variables as flat keys -> shapes, without computing them."""
    return tree.flatten(jax.eval_shape(functools.partial(contract.init, model),
                                       jax.random.key(0)))


def load(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
         strict: bool = False, reset_head: bool = False, seed: int = 0) -> dict[str, Any]:
    """Loads a checkpoint into variables for `model` (`model.apply(variables, images)`).

    A head whose class count differs from the checkpoint's is re-initialised (what fine-tuning
    needs), with a log line; `strict=True` makes that, and checkpoint arrays the model does not
    use, an error. `reset_head=True` re-initialises the head whatever its shape, as the original
    fine-tuning code does. `seed` seeds the re-initialised arrays.
    """
    mapping = model.checkpoints()
    # Mappings, resizing and checks see one key per layer; a scanned model's stack comes last.
    checkpoint = tree.unstack_layers(read(source), model.stacked_layers)
    shapes = model_shapes(model)
    target = tree.unstack_layers(shapes, model.stacked_layers)
    converted = _as_own_layout(checkpoint, target)
    if converted is None and mapping.convert is not None:
        converted = mapping.convert(checkpoint, model)
    if converted is None:
        layouts = mapping.layouts or 'its own parameter names'
        raise ModelError(
            f'the checkpoint is not a {type(model).__name__} checkpoint in a layout vit_jax knows '
            f'({layouts}); its first keys are {sorted(checkpoint)[:3]}')
    fitted = _fit(converted, target, model, mapping, strict, reset_head, seed)
    return tree.unflatten(tree.stack_layers(fitted, shapes, model.stacked_layers))


def _as_own_layout(checkpoint: Flat, target: Mapping[str, Any]) -> Flat | None:
    """The checkpoint keyed by the model's own names, if it mostly uses them already."""
    own = {}
    for key, value in checkpoint.items():
        key = key.removeprefix('opt/target/')  # checkpoints saved with flax.optim's optimizer
        own[key if key.split('/')[0] in COLLECTIONS else f'params/{key}'] = value
    return own if len(own.keys() & target.keys()) >= len(target) / 2 else None


def _fit(arrays: Flat, target: Mapping[str, Any], model: nn.Module, mapping: contract.Checkpoints,
         strict: bool, reset_head: bool, seed: int) -> Flat:
    name = type(model).__name__
    heads = tuple(f'params/{head}/' for head in model.head_names)
    out, reinit = {}, []
    for key, spec in target.items():
        is_head = key.startswith(heads)
        if is_head and reset_head:
            reinit.append(key)
            continue
        if key not in arrays:
            if is_head and not strict:
                reinit.append(key)
                continue
            missing = [k for k in target if k not in arrays]
            raise ModelError(
                f'the checkpoint lacks {len(missing)} of the {name} arrays, first {key!r} '
                f'{tuple(spec.shape)}; it was saved from another model or family')
        value = arrays[key]
        if value.shape != tuple(spec.shape) and mapping.resize is not None:
            resized = mapping.resize(key, value, tuple(spec.shape), model)
            if resized is not None:
                log.info('resized %s from %s to %s', key, value.shape, tuple(spec.shape))
                value = resized
        if value.shape != tuple(spec.shape):
            if is_head and not strict:
                reinit.append(key)
                continue
            hint = ('; load with strict=False to re-initialise the head' if is_head else
                    '; it was saved from another model size or family')
            raise ModelError(f'{key} has shape {value.shape} in the checkpoint but '
                             f'{tuple(spec.shape)} in the {name}{hint}')
        out[key] = np.asarray(value, dtype=spec.dtype)
        if not np.isfinite(out[key]).all():
            raise ModelError(f'{key} holds NaN or infinite values in the checkpoint; it was '
                             f'saved from a diverged run: load an earlier checkpoint')
    unused = sorted(arrays.keys() - target.keys())
    if unused and strict:
        raise ModelError(f'the checkpoint has {len(unused)} arrays the {name} does not use, '
                         f'first {unused[0]!r}; load with strict=False to ignore them')
    if unused:
        log.info('ignored %d checkpoint arrays the model does not use: %s', len(unused),
                 ', '.join(unused[:5]))
    if reinit:
        why = 'as asked' if reset_head else 'the checkpoint has another class count'
        log.info('re-initialised %s (%s)', ', '.join(reinit), why)
        fresh = jax.jit(functools.partial(contract.init, model))(jax.random.key(seed))
        fresh = tree.unstack_layers(tree.flatten(fresh), model.stacked_layers)
        out.update({k: np.asarray(fresh[k]) for k in reinit})
    return out


def pretrained(name: str, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """`(model, variables)` of the published checkpoint `name` (`python -m vit_jax.hub --list`)
    or of a registered model's default one, downloaded once into the cache.

    `overrides` are model options, as `create_model`'s: `num_classes=10` starts a fresh head
    (for fine-tuning), `img_size=384` resizes the position embedding.
    Example: `model, variables = vit_jax.pretrained('ViT-B_16')`, then
    `model.apply(variables, images, train=False)` -> logits `[batch, 1000]`.
    """
    if (name in registry.list_models()
            and name not in {e.model for e in catalogue.CATALOGUE.values()}):
        raise ModelError(f'model {name!r} has no published weights (python -m vit_jax.hub '
                         f'--list); create_model it and load a file with vit_jax.weights.load')
    entry = catalogue.find(name)
    model = registry.create_model(entry.model, **{'num_classes': entry.num_classes,
                                                  'img_size': entry.img_size, **entry.options,
                                                  **overrides})
    return model, load(model, catalogue.fetch(entry))


def hf_model(directory: str | os.PathLike, **overrides: Any) -> nn.Module:
    """The model a Hugging Face directory's `config.json` describes (`model_type` picks the
    family, the config its size), with `overrides` of its options; load its weights with
    `load(model, directory)`."""
    config = hf_config(directory)
    builders = {t: family for family in registry.families()
                for t in family.checkpoints().hf_model_types}
    kind = config.get('model_type')
    family = builders.get(kind) if isinstance(kind, str) else None
    if family is None:
        raise ModelError(f'{os.fspath(directory)!r} holds a Hugging Face {kind!r} model; vit_jax '
                         f'builds {", ".join(sorted(builders))}')
    where = os.path.join(os.fspath(directory), 'config.json')
    try:
        options = family.checkpoints().hf_options(config, frozenset(read(directory)))
    except ZeroDivisionError:  # a width of 0 divides another (ViT's mlp_ratio)
        zero = next((f'{k}=0' for k, v in config.items() if v == 0 and not isinstance(v, bool)
                     and (k.endswith('_size') or k.startswith('num_'))), 'a size of 0')
        raise ModelError(f'{where!r} gives {zero}, which a model cannot have; download or save '
                         f'the model again') from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f'{where!r} is no {kind} config vit_jax reads ({type(e).__name__}: '
                         f'{e}); download or save the model again') from None
    _check_sizes(family, options, where)
    return family(**{**options, **overrides})


def _check_sizes(module: type[nn.Module], options: dict[str, Any], where: str) -> None:
    """A `ModelError` for an option read from `where` that is not a positive number (a count
    of classes: not negative) where `module`'s default is one, or a tuple of them."""
    defaults = {f.name: f.default for f in dataclasses.fields(module)}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for key, value in options.items():
        default = defaults.get(key)
        if number(default):
            fits = number(value) and (value >= 0 if key == 'num_classes' else value > 0)
        elif isinstance(default, tuple) and default and all(map(number, default)):
            fits = isinstance(value, tuple) and bool(value) and all(
                number(v) and v > 0 for v in value)
        else:
            continue
        if not fits or (isinstance(default, int) and not isinstance(value, int)):
            raise ModelError(f'{where!r} gives {key}={value!r}, which a model cannot have; '
                             f'download or save the model again')


def hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of a Hugging Face `save_pretrained` directory."""
    path = os.path.join(os.fspath(directory), 'config.json')
    if not os.path.isfile(path):
        raise ModelError(f'{os.fspath(directory)!r} has no config.json; pass a Hugging Face '
                         f'save_pretrained directory, or create the model and load the weights '
                         f'file')
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelError(f'{path!r} holds no config (a JSON {type(config).__name__}); download '
                         f'or save the model again')
    return config


# ----------------------------------------------------------------------------- writing


def save_npz(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes variables as an `.npz` in the original layout (`npz_arrays`), locally or in a
    bucket. The file appears complete or not at all."""
    buffer = io.BytesIO()
    np.savez(buffer, **npz_arrays(variables))
    storage.write_atomic(storage.path(path), buffer.getvalue())


def npz_arrays(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the original .npz layout: params keys without a prefix, other collections
    (BatchNorm statistics) with theirs; a model scanned over its layers one key per layer.

    The original google-research/vision_transformer code and timm's reader of that format load
    them."""
    flat = tree.unstack_layers(tree.flatten(variables))
    return {k.removeprefix('params/'): np.asarray(v) for k, v in flat.items()}


def save_hf(model: nn.Module, variables: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """Writes a Hugging Face `save_pretrained` directory (`config.json`, `model.safetensors` with
    the hub's array names) that `transformers`' `from_pretrained` reads."""
    to_hf = model.checkpoints().to_hf
    if to_hf is None:
        exporting = sorted(f.__name__ for f in registry.families() if f.checkpoints().to_hf)
        raise ModelError(f'{type(model).__name__} has no Hugging Face export; families with one: '
                         f'{", ".join(exporting)}')
    from safetensors.numpy import save_file

    flat = tree.unstack_layers(tree.flatten(variables), model.stacked_layers)
    config, arrays = to_hf(model, flat)
    config.setdefault('id2label', {str(i): f'LABEL_{i}' for i in range(model.num_classes)})
    directory = os.fspath(directory)
    with storage.reporting(f'cannot write {directory}', directory, 'directory'):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()},
                  os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
