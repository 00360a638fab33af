"""Checkpoint import and export for every family: `load(model, source)`, `save_npz`, `save_hf`.

`source` is a path (`.npz` in the original or big_vision layout, a PyTorch state dict as `.pth`,
`.pt`, `.bin` or `.safetensors`, a Hugging Face `save_pretrained` directory with `config.json`),
a URL of such a file (`gs://`, `s3://`, `http(s)://`) or a published checkpoint's name
(`vit_jax.catalogue`; both downloaded once into a checked cache), or an in-memory mapping of arrays.
`hf_model(directory)` builds the model a Hugging Face directory's `config.json` describes (each
family registers its `model_type` with `register_hf`). `load` reads it into flat arrays, lets
the model's family map foreign names onto its own (each family file ends with its mapping and
registers it here with `register_mapping`, as timm keeps a `checkpoint_filter_fn` beside each
model), resizes what the family knows how to resize (position embeddings, relative
position bias tables), re-initialises a head (the family's declared `head_names`) whose class
count differs, and checks every name and shape against the model.

Flat keys are `vit_jax.tree` names: '/'-joined paths that start with the variable collection,
`params/Transformer/encoder_norm/scale`, `batch_stats/stem/bn/mean`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import catalogue, storage, tree
from vit_jax.errors import ModelError

log = logging.getLogger(__name__)

Flat = dict[str, np.ndarray]
Rules = tuple[tuple[str, str], ...]  # regular expression substitutions, applied in order
Converter = Callable[[Flat, nn.Module], 'Flat | None']
Resizer = Callable[[str, np.ndarray, tuple[int, ...], nn.Module], 'np.ndarray | None']
COLLECTIONS = ('params', 'batch_stats')
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# Keys under which training scripts nest the state dict (timm, DeiT, Swin, ConvNeXt, DHVT, SReT).
NESTING_KEYS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')
# Weight files of a Hugging Face directory, in the order they are looked for (one file, or the
# index of a sharded one).
# `layers.MultiHeadAttention`'s projections -> timm's names (with `q`, `k`, `v` unfused).
TIMM_ATTENTION = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'proj'}
HF_WEIGHTS = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
              'pytorch_model.bin.index.json')


@dataclasses.dataclass(frozen=True)
class WeightMap:
    """How one family reads foreign checkpoints.

    `convert(arrays, model)` maps a checkpoint's flat arrays to the model's flat keys, or returns
    None when it does not recognise the layout. `resize(key, array, shape, model)` adapts an
    array whose shape differs (e.g. a position embedding trained at another resolution) or
    returns None. `layouts` names the accepted layouts in error messages. `convert` and
    `resize` see one key per layer of a scanned model (the family's `stacked_layers`); `load`
    and `save_npz` stack and unstack.
    """

    convert: Converter
    resize: Resizer | None = None
    layouts: str = ''


_MAPPINGS: dict[type, WeightMap] = {}


def register_mapping(module: type[nn.Module], convert: Converter, *, resize: Resizer | None = None,
                     layouts: str = '') -> None:
    """Registers the checkpoint mapping of a family's module class (at the end of its file)."""
    _MAPPINGS[module] = WeightMap(convert, resize, layouts)


@dataclasses.dataclass(frozen=True)
class HfFamily:
    """How one family reads and writes Hugging Face `transformers` directories.

    `options(config)` turns a `config.json` (and the names of the directory's arrays) into the
    family module's keyword arguments, raising `ModelError` for what the family cannot build.
    `export(model, flat_params)`, where a family writes Hugging Face weights, returns the
    `config.json` contents and the hub-named PyTorch-layout arrays.
    """

    module: type
    options: Callable[[dict[str, Any], frozenset[str]], dict[str, Any]]
    export: Callable[[nn.Module, Flat], tuple[dict[str, Any], Flat]] | None = None


_HF: dict[str, HfFamily] = {}


def register_hf(model_type: str, module: type[nn.Module],
                options: Callable[[dict[str, Any], frozenset[str]], dict[str, Any]], *,
                export: Callable[[nn.Module, Flat], tuple[dict[str, Any], Flat]] | None = None,
                ) -> None:
    """Registers the family that builds Hugging Face `model_type` (at the end of its file)."""
    _HF[model_type] = HfFamily(module, options, export)


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
    images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, model.in_chans), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return tree.flatten(shapes)


def load(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
         strict: bool = False, reset_head: bool = False, seed: int = 0) -> dict[str, Any]:
    """Loads a checkpoint into variables for `model` (`model.apply(variables, images)`).

    A head whose class count differs from the checkpoint's is re-initialised (what fine-tuning
    needs), with a log line; `strict=True` makes that, and checkpoint arrays the model does not
    use, an error. `reset_head=True` re-initialises the head whatever its shape, as the original
    fine-tuning code does. `seed` seeds the re-initialised arrays.
    """
    mapping = _MAPPINGS.get(type(model)) or WeightMap(lambda *_: None)
    # Mappings, resizing and checks see one key per layer; a scanned model's stack comes last.
    checkpoint = tree.unstack_layers(read(source), model.stacked_layers)
    shapes = model_shapes(model)
    target = tree.unstack_layers(shapes, model.stacked_layers)
    converted = _as_own_layout(checkpoint, target)
    if converted is None:
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


def _fit(arrays: Flat, target: Mapping[str, Any], model: nn.Module, mapping: WeightMap,
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
        fresh = tree.unstack_layers(tree.flatten(_init(model, seed)), model.stacked_layers)
        out.update({k: np.asarray(fresh[k]) for k in reinit})
    return out


def _init(model: nn.Module, seed: int) -> Any:
    images = jnp.zeros((1, model.img_size, model.img_size, model.in_chans))
    return jax.jit(lambda x: model.init(jax.random.key(seed), x, train=False))(images)


def hf_model(directory: str | os.PathLike, **overrides: Any) -> nn.Module:
    """The model a Hugging Face directory's `config.json` describes (`model_type` picks the
    family, the config its size), with `overrides` of its options; load its weights with
    `load(model, directory)`."""
    config = hf_config(directory)
    kind = config.get('model_type')
    family = _HF.get(kind) if isinstance(kind, str) else None
    if family is None:
        raise ModelError(f'{os.fspath(directory)!r} holds a Hugging Face {kind!r} model; vit_jax '
                         f'builds {", ".join(sorted(_HF))}')
    names = frozenset(read(directory))
    where = os.path.join(os.fspath(directory), 'config.json')
    try:
        options = family.options(config, names)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelError(f'{where!r} is no {kind} config vit_jax reads ({type(e).__name__}: '
                         f'{e}); download or save the model again') from None
    _check_sizes(family.module, options, where)
    return family.module(**{**options, **overrides})


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


def rename(arrays: Flat, rules: Rules) -> Flat:
    """Renames every key by the regular expression substitutions `rules`, applied in order."""
    out = {}
    for key, value in arrays.items():
        for pattern, new in rules:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def hf_names(arrays: Flat, rules: Rules, root: str) -> Flat:
    """Arrays under the names a family's reading `rules` give (timm's, say) -> the Hugging Face
    names they read (`invert(rules)`), all but the classifiers' (`classifier.weight`, ...) under
    the model's `root` (`swin.`; '' for a base model)."""
    named = rename(arrays, invert(rules))
    return {k if re.match(r'\w*classifier\.', k) else root + k: v for k, v in named.items()}


def fuse_qkv(arrays: Flat) -> Flat:
    """Separate `{prefix}.q`, `.k`, `.v` projections (Hugging Face) -> one `{prefix}.qkv`
    (timm): weights `[3 * dim, dim]`, biases `[3 * dim]`."""
    out = dict(arrays)
    for key in arrays:
        match = re.fullmatch(r'(.*)\.q\.(weight|bias)', key)
        if match:
            parts = [out.pop(f'{match[1]}.{p}.{match[2]}') for p in 'qkv']
            out[f'{match[1]}.qkv.{match[2]}'] = np.concatenate(parts)
    return out


_RULE_TOKEN = re.compile(r'\\([^\w])|\(([^()]*)\)|(\w)')  # escaped char, group, letter


def invert(rules: Rules) -> Rules:
    """The substitutions that undo `rules` (applied in reverse order): what writes a family's
    foreign names back from the rules that read them.

    A pattern may hold literal text (`\\.` escaped), a leading `^` and a trailing `$`, groups of
    alternative spellings whose first is the one written back (`(self\\.query|q_proj)`), and
    groups that its replacement takes over (`(\\d+)` and `\\1`); anything else is a
    `ValueError`.
    """
    return tuple(_invert_rule(pattern, new) for pattern, new in reversed(rules))


def _invert_rule(pattern: str, replacement: str) -> tuple[str, str]:
    start, end = pattern.startswith('^'), pattern.endswith('$')
    body = pattern[start:len(pattern) - end]
    groups, written, pos = [], [], 0  # written: literal text, or the number of a taken group
    while pos < len(body):
        token = _RULE_TOKEN.match(body, pos)
        if token is None:
            raise ValueError(f'cannot invert the rule {pattern!r}: {body[pos:]!r}')
        escaped, group, literal = token.groups()
        if group is not None and '|' in group:
            groups.append(None)
            written.append(re.sub(r'\\(.)', r'\1', group.split('|')[0]))
        elif group is not None:
            groups.append(group)
            written.append(len(groups))
        else:
            written.append(escaped or literal)
        pos = token.end()
    taken, new_pattern = {}, ''
    for piece in re.split(r'(\\\d)', replacement):
        if re.fullmatch(r'\\\d', piece):
            number = int(piece[1])
            taken[number] = len(taken) + 1
            new_pattern += f'({groups[number - 1]})'
        else:
            new_pattern += re.escape(piece)
    if any(isinstance(w, int) and w not in taken for w in written):
        raise ValueError(f'cannot invert the rule {pattern!r}: a group its replacement drops')
    new = ''.join(rf'\g<{taken[w]}>' if isinstance(w, int) else w for w in written)
    return '^' * start + new_pattern + '$' * end, new


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


# ----------------------------------------------------------------------------- PyTorch layouts


def linear(weight: np.ndarray) -> np.ndarray:
    """PyTorch `Linear.weight` `[out, in]` -> flax `Dense.kernel` `[in, out]`."""
    return weight.T


def conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight `[out, in, h, w]` -> flax kernel `[h, w, in, out]`."""
    return weight.transpose(2, 3, 1, 0)


def to_torch(params: Flat) -> Flat:
    """Parameters keyed `module/.../leaf` (no collection prefix) -> PyTorch arrays keyed
    `module.....leaf`: the inverse of `linear`, `conv` and `attention`, whose `query`, `key`,
    `value` and `out` become timm's `q`, `k`, `v` (separate projections `[heads * head_dim,
    dim]`, as Hugging Face keeps them) and `proj`; LayerNorm `scale` and every `kernel` become
    `weight`, other arrays keep their names."""
    out = {}
    for key, value in params.items():
        module, _, leaf = key.rpartition('/')
        parent, _, name = module.rpartition('/')
        if name in TIMM_ATTENTION:
            module = f'{parent}/{TIMM_ATTENTION[name]}'
        if leaf == 'kernel' and value.ndim == 3:  # layers.MultiHeadAttention
            value = (value.reshape(-1, value.shape[-1]) if name == 'out' else
                     value.reshape(value.shape[0], -1)).T
        elif leaf == 'kernel':
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif leaf == 'bias' and value.ndim == 2:
            value = value.reshape(-1)
        leaf = 'weight' if leaf in ('kernel', 'scale') else leaf
        out[f'{module.replace("/", ".")}.{leaf}' if module else leaf] = value
    return out


def attention(prefix: str, qkv_weight: np.ndarray, qkv_bias: np.ndarray | None,
              proj_weight: np.ndarray, proj_bias: np.ndarray, num_heads: int) -> Flat:
    """A fused PyTorch `qkv` + `proj` attention -> `layers.MultiHeadAttention` arrays under
    `prefix` (`query`/`key`/`value` kernels `[dim, heads, head_dim]`, `out` `[heads, head_dim,
    dim]`)."""
    dim = proj_weight.shape[0]
    head_dim = qkv_weight.shape[0] // 3 // num_heads
    out = {f'{prefix}/out/kernel': proj_weight.T.reshape(num_heads, head_dim, dim),
           f'{prefix}/out/bias': proj_bias}
    width = num_heads * head_dim
    for i, name in enumerate(('query', 'key', 'value')):
        rows = slice(i * width, (i + 1) * width)
        out[f'{prefix}/{name}/kernel'] = qkv_weight[rows].T.reshape(dim, num_heads, head_dim)
        if qkv_bias is not None:
            out[f'{prefix}/{name}/bias'] = qkv_bias[rows].reshape(num_heads, head_dim)
    return out



def save_hf(model: nn.Module, variables: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """Writes a Hugging Face `save_pretrained` directory (`config.json`, `model.safetensors` with
    the hub's array names) that `transformers`' `from_pretrained` reads."""
    family = next((f for f in _HF.values() if f.module is type(model) and f.export), None)
    if family is None:
        exporting = sorted({f.module.__name__ for f in _HF.values() if f.export})
        raise ModelError(f'{type(model).__name__} has no Hugging Face export; families with one: '
                         f'{", ".join(exporting)}')
    from safetensors.numpy import save_file

    flat = tree.unstack_layers(tree.flatten(variables), model.stacked_layers)
    config, arrays = family.export(model, flat)
    config.setdefault('id2label', {str(i): f'LABEL_{i}' for i in range(model.num_classes)})
    directory = os.fspath(directory)
    with storage.reporting(f'cannot write {directory}', directory, 'directory'):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()},
                  os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
