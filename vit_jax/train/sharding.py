"""The device mesh and how arrays are placed on it.

The mesh has three axes: `data` (each device group sees other examples, parameters replicated),
`fsdp` (fully sharded data parallel: more examples, and each large parameter and its optimizer
state split across the group instead of copied) and `model` (tensor parallelism: the devices
of a group see the same examples and each computes a share of every layer's attention heads and
MLP hidden units). `config.mesh` names their sizes, e.g. `[('data', -1)]` (every device
data-parallel), `[('data', 4), ('fsdp', 2)]` or `[('data', 2), ('fsdp', 2), ('model', 2)]`;
-1 takes the devices left over. The batch is split over `data` and `fsdp`, so `batch` is always
global.

Parameters and optimizer state are placed by `config.param_sharding`, rules `(regex, how)`
tried in order on each array's name (`params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`,
the optimizer's copy `opt_state/0/mu/Transformer/.../kernel`): `how` is 'replicate' or 'fsdp',
which splits the largest dimension divisible by the `fsdp` size, for arrays of at least
`config.fsdp_min_size` elements. The rules see only names and sizes, so they cover every family.
A model scanned over its layers (`scan_layers`) stacks block parameters `[layers, ...]`
(`params/Transformer/encoderblock/...`): FSDP never splits that layer axis but the largest of
the others, so that each step of the scan gathers one layer's slices (true FSDP: one layer
whole at a time) rather than every layer's (a split layer axis makes the per-layer slice a
gather of the whole stack, or a layer that lives on one device).

The `model` axis splits each array as its family's `model_splits` say (`contract.Split`, declared
on the family's class): the arrays of `layers.MultiHeadAttention` and `layers.MlpBlock` as
Megatron-LM does (`query`, `key`, `value` on their heads, `out` on its input heads, the MLP's
`Dense_0` on its output and `Dense_1` on its input), the rest whole. Such an array may be split
on `model` and `fsdp` at once (on two other dimensions).

Activations carry logical axis names (`nn.with_logical_constraint(x, ('batch', 'tokens',
'embed'))`); `ACTIVATION_RULES` maps them onto the mesh while the steps are traced.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax import tree
from vit_jax.errors import ConfigError
from vit_jax.models import contract

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
MODEL_AXIS = 'model'
AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over data x fsdp devices
STRATEGIES = ('replicate', 'fsdp')
# Logical activation axes -> mesh axes: the batch over data x fsdp, attention heads and MLP
# hidden units over model; the rest stay whole.
ACTIVATION_RULES = (('batch', BATCH_AXES), ('tokens', None), ('height', None), ('width', None),
                    ('embed', None), ('heads', MODEL_AXIS), ('mlp', MODEL_AXIS),
                    ('classes', None))

def make_mesh(spec: Sequence[Sequence[Any]] = ((DATA_AXIS, -1),),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh `spec` = `[(axis, size), ...]` over `devices` (default: every device of every
    process); axes it leaves out have size 1, one size may be -1 (the devices left over)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = _axis_sizes(spec, len(devices))
    return Mesh(np.asarray(devices).reshape([sizes[a] for a in AXES]), AXES)


def _axis_sizes(spec: Sequence[Sequence[Any]], n: int) -> dict[str, int]:
    text = f'--config.mesh={[tuple(s) for s in spec]!r}'
    try:
        sizes = {str(axis): int(size) for axis, size in spec}
    except (TypeError, ValueError):
        raise ConfigError(f'{text} is not a list of (axis, size) pairs; e.g. '
                          f"[('data', -1)] or [('data', 4), ('fsdp', 2)]") from None
    unknown = sorted(set(sizes) - set(AXES))
    if unknown or len(sizes) != len(spec):
        raise ConfigError(f'{text}: axes must be distinct names out of {AXES}, got {unknown}')
    free = [a for a, s in sizes.items() if s == -1]
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f'{text}: sizes must be positive, with at most one -1')
    if free:
        if n % fixed:
            raise ConfigError(f'{text} does not fit {n} devices: {n} is not divisible by '
                              f'{fixed}; use sizes whose product divides {n}')
        sizes[free[0]] = n // fixed
    elif fixed != n:
        raise ConfigError(f'{text} needs {fixed} devices but there are {n}; make the sizes '
                          f'multiply to {n}, or give one axis size -1')
    return {a: sizes.get(a, 1) for a in AXES}


def place(value: Any, like: Any) -> jax.Array:
    """The host or device array `value` placed as `like` (an array or a
    `jax.ShapeDtypeStruct` with a sharding) is."""
    return jax.make_array_from_callback(like.shape, like.sharding, lambda i: value[i])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over `data` x `fsdp` (each `model` group of devices
    holds the same rows)."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_devices(mesh: Mesh) -> int:
    """How many ways the batch is split: the `data` x `fsdp` devices."""
    return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def check_batch_size(name: str, size: int, devices: int, accum_steps: int = 1) -> None:
    """A global batch, and each of its `accum_steps` micro-batches, must split evenly over
    the `devices` (`batch_devices`)."""
    if (size // accum_steps) % devices:
        micro = (f' / --config.accum_steps={accum_steps} = {size // accum_steps} per '
                 f'micro-batch' if accum_steps > 1 else '')
        raise ConfigError(f'--config.{name}={size}{micro} does not split over {devices} '
                          f'devices; use a multiple of {devices * accum_steps}')


def check_input_split(devices: np.ndarray) -> None:
    """Raises a `ConfigError` unless each `model` group of the mesh's `devices` `[data, fsdp,
    model]` lies in one process: the input pipeline gives each process rows of its own, so two
    processes cannot hold the same rows."""
    processes = np.vectorize(lambda d: d.process_index)(devices)
    groups = processes.reshape(-1, processes.shape[-1])
    if (groups != groups[:, :1]).any():
        local = int((processes == processes.flat[0]).sum())
        raise ConfigError(f'--config.mesh: the model axis ({processes.shape[-1]} devices) spans '
                          f'processes of {local} devices each; use a model size that divides '
                          f'{local}')


def fsdp_dim(shape: Sequence[int], fsdp_size: int, layer_axes: int = 0,
             taken: int | None = None) -> int | None:
    """The largest dimension divisible by `fsdp_size` (or none), leaving the first `layer_axes`
    (stacked layers) and dimension `taken` (split over `model`) whole."""
    if fsdp_size > 1:
        for dim in sorted(range(layer_axes, len(shape)), key=lambda d: -shape[d]):
            if dim != taken and shape[dim] % fsdp_size == 0:
                return dim
    return None


def model_dim(name: str, shape: Sequence[int], model_size: int, layer_axes: int = 0,
              family: type[contract.Family] | None = None) -> int | None:
    """The dimension of array `name` that `family`'s `model_splits` split over `model` (or
    none); raises a `ConfigError` when `model_size` does not divide it."""
    if model_size == 1:
        return None
    if family is None:
        raise ValueError('a model axis needs the family whose model_splits place the arrays')
    split = contract.split_of(family, name)
    if split is None or split.dim is None:
        return None
    size = shape[layer_axes + split.dim]
    if size % model_size:
        raise ConfigError(
            f'--config.mesh: the model axis ({model_size}) does not divide the {split.what} '
            f'({size}) of {name} {tuple(shape)}; use a model size that divides every '
            f"layer's heads and MLP width")
    return layer_axes + split.dim


def check_rules(rules: Sequence[Sequence[str]]) -> None:
    """Raises a `ConfigError` unless `rules` is `[(regex, 'replicate' | 'fsdp'), ...]`."""
    for rule in rules:
        if len(rule) != 2 or rule[1] not in STRATEGIES:
            raise ConfigError(f'--config.param_sharding rule {tuple(rule)!r} must be (regex, how) '
                              f'with how one of {STRATEGIES}')
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f'--config.param_sharding regex {rule[0]!r} is invalid: {e}'
                              ) from None


def param_spec(name: str, shape: Sequence[int], fsdp_size: int, rules: Sequence[Sequence[str]],
               min_size: int, model_size: int = 1, family: type[contract.Family] | None = None,
               ) -> PartitionSpec:
    """The placement of array `name`: over `model` by `family`'s `model_splits`, and over
    `fsdp` by the first rule whose regex it contains (the size is judged per layer for stacked
    layers, as the unscanned model's arrays are)."""
    layer_axes = tree.layer_axes(name)
    spec = [None] * len(shape)
    split = model_dim(name, shape, model_size, layer_axes, family)
    if split is not None:
        spec[split] = MODEL_AXIS
    if len(shape) > layer_axes and int(np.prod(shape[layer_axes:])) >= max(min_size, 1):
        how = next((how for pattern, how in rules if re.search(pattern, name)), 'replicate')
        dim = fsdp_dim(shape, fsdp_size, layer_axes, split) if how == 'fsdp' else None
        if dim is not None:
            spec[dim] = FSDP_AXIS
    return PartitionSpec(*spec) if any(spec) else PartitionSpec()


def state_specs(state: Any, fsdp_size: int, rules: Sequence[Sequence[str]],
                min_size: int, model_size: int = 1, family: type[contract.Family] | None = None,
                ) -> Any:
    """`PartitionSpec`s for a train state (arrays or shapes) of a `family` model: `param_spec`
    places `params` and `opt_state`, and the moving average's parameters (`ema/params/...`) as
    the parameters they average; the step, RNG key and mutable model state (BatchNorm) are
    replicated."""

    def place(path, leaf):
        name = tree.array_name(path).removeprefix('ema/')
        if name.split('/')[0] not in ('params', 'opt_state'):
            return PartitionSpec()
        return param_spec(name, leaf.shape, fsdp_size, rules, min_size, model_size, family)

    return jax.tree_util.tree_map_with_path(place, state)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[Sequence[str]],
                    min_size: int, family: type[contract.Family]) -> Any:
    """`NamedSharding`s on `mesh` by `state_specs`."""
    specs = state_specs(state, mesh.shape[FSDP_AXIS], rules, min_size, mesh.shape[MODEL_AXIS],
                        family)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def activation_rules(mesh: Mesh) -> Iterator[None]:
    """Within: `nn.with_logical_constraint` places activations on `mesh` by `ACTIVATION_RULES`."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
            nn.logical_axis_rules(ACTIVATION_RULES):
        yield


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced with the activation rules of `mesh` (wrap before `jax.jit`)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with activation_rules(mesh):
            return fn(*args, **kwargs)

    return wrapped


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def initialize_processes(coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None,
                         ) -> None:
    """Joins this process to a multi-process run with `jax.distributed.initialize`.

    On TPU pods, SLURM and Open MPI the arguments are found by JAX; elsewhere give all three
    (the coordinator is process 0's `host:port`). Devices of every process then form one mesh.
    CPU processes exchange data with gloo.
    """
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
