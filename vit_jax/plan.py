r"""Plans a training run for a TPU slice on any machine: compiles the run's real train and eval
steps for a TPU topology ahead of time (MaxText's `train_compile.py`), no TPU needed.

    python -m vit_jax.plan --config=configs/vit.py:b16,imagenet2012 --topology=v5e:4x4 \
        --config.batch=4096 --config.model.dtype=bfloat16 [--json] [--search]

The run is built by the trainer's own `vit_jax.train.setup.setup` on a mesh of `config.mesh`
over the topology's abstract devices (`jax.experimental.topologies`; XLA for TPU from libtpu:
`pip install 'vit_jax[tpu]'`). No data is read: the image size is `config.pp.crop`, the class
count `--num_classes`, else the one `vit_jax.data.known` records, else the dataset's metadata
(`vit_jax.data.dataset_info`, which needs TensorFlow and the dataset prepared).

Per chip it prints the parameters and optimizer state, the temporaries (activations), their
total against the chip's HBM (`HBM_GIB`), whether it fits and the headroom, the compiler's
FLOPs per step beside the model's (3 x the forward pass, the usual count of forward and
backward: remat's recomputation shows as the difference; a step with loops is counted from
shallower, one-micro-batch compiles, `looped_flops`), and the compile times. `--search`
tries the trainer's layouts (`search`: FSDP and `model` axis sizes, remat, micro-batches,
bfloat16 optimizer state) and prints those that fit, each as the flags to add.
Topology names are JAX's: `v4:2x2x1`, `v5e:4x4`, `v5p:2x2x2`, `v6e:8x8`, ...
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import cli
from vit_jax import config as config_lib
from vit_jax.data import known
from vit_jax.errors import ConfigError, PlanError, VitJaxError
from vit_jax.train import xla_costs
from vit_jax.train.setup import Setup, make_mesh, setup

GIB = 2 ** 30
# HBM per chip of each TPU kind, as Google documents it (read as GiB):
# v2 16 GiB, v3 32 GiB: https://cloud.google.com/tpu/docs/system-architecture-tpu-vm
# v4 32 GiB: https://cloud.google.com/tpu/docs/v4
# v5e 16 GiB: https://cloud.google.com/tpu/docs/v5e
# v5p 95 GiB: https://cloud.google.com/tpu/docs/v5p
# v6e 32 GiB: https://cloud.google.com/tpu/docs/v6e
HBM_GIB = {'v2': 16, 'v3': 32, 'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
# Class counts of tfds datasets (their metadata) and of `digits`, so that a plan needs no data.
# Sizes of the `model` (tensor-parallel) mesh axis that `--search` tries.
MODEL_SIZES = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One config compiled for one topology. Bytes and FLOPs are per chip (all of its cores);
    `model_flops_per_step` is for the whole global batch."""

    topology: str
    chips: int
    devices: int
    mesh: dict[str, int]
    parameters: int
    hbm_bytes_per_chip: int
    state_bytes_per_chip: int  # parameters, optimizer state (and EMA) as placed
    argument_bytes_per_chip: int  # the state and the batch's slice
    temp_bytes_per_chip: int
    train_bytes_per_chip: int  # arguments + outputs + temporaries - donated
    eval_bytes_per_chip: int
    fits: bool
    headroom_bytes_per_chip: int
    flops_per_step_per_chip: float
    model_flops_per_step: float
    compile_seconds: dict[str, float]
    overflow: str = ''  # the TPU compiler's reason when it refused a step for want of HBM

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def topology_devices(name: str) -> list[jax.Device]:
    """The abstract devices of TPU topology `name` (`v5e:4x4`), compiled for by libtpu."""
    if importlib.util.find_spec('libtpu') is None:
        raise PlanError("planning for TPU needs libtpu, XLA's TPU compiler: "
                        "pip install 'vit_jax[tpu]'")
    kind = name.partition(':')[0]
    if kind not in HBM_GIB or ':' not in name:
        raise PlanError(f'unknown TPU topology {name!r}; name one as <kind>:<chips per axis> with '
                        f'kind one of {sorted(HBM_GIB)}, e.g. v5e:4x4, v4:2x2x1, v5p:4x4x4')
    # Other processes that loaded libtpu hold its lock file; compiling needs no TPU to lock.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(name, 'tpu').devices)
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).splitlines()[0]
        raise PlanError(f'libtpu does not know TPU topology {name!r} ({reason}); name one as '
                        f'<kind>:<chips per axis>, e.g. v5e:4x4, v4:2x2x1, v5p:4x4x4') from None


def chip_count(devices: Sequence[jax.Device]) -> int:
    """Chips of a topology: its devices' distinct coordinates (a v4 chip has two cores)."""
    return len({tuple(d.coords) for d in devices})


def class_count(config: ml_collections.ConfigDict, num_classes: int | None = None) -> int:
    """`num_classes` if given, else the known count of `config.dataset`, else its metadata."""
    if num_classes:
        return num_classes
    if known.dataset(config.dataset).num_classes:
        return known.dataset(config.dataset).num_classes
    from vit_jax import data  # the input pipeline imports TensorFlow: only when needed

    try:
        return data.dataset_info(config).num_classes
    except (VitJaxError, ImportError) as e:
        raise PlanError(f'the class count of dataset {config.dataset!r} is unknown here '
                        f'({str(e).splitlines()[0]}); pass --num_classes=N') from None


def abstract_batch(config: ml_collections.ConfigDict, in_chans: int,
                   batch_sharding: jax.sharding.NamedSharding, *, eval: bool = False
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """What the input pipeline feeds the train (or eval) step, as shapes: `image` uint8
    `[batch, crop, crop, in_chans]`, `label` int32 `[batch]`, for training `seed` uint32
    `[batch, 2]` and for eval `mask` `[batch]` (see `vit_jax.data.create_datasets`)."""
    size, crop = (config.batch_eval if eval else config.batch), config.pp.crop
    batch = {'image': jax.ShapeDtypeStruct((size, crop, crop, in_chans), jnp.uint8,
                                           sharding=batch_sharding),
             'label': jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batch_sharding)}
    if eval:
        batch['mask'] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=batch_sharding)
    else:
        batch['seed'] = jax.ShapeDtypeStruct((size, 2), jnp.uint32, sharding=batch_sharding)
    return batch


def state_bytes(abstract_state: Any) -> int:
    """Bytes of a placed train state on its most loaded device (`ShapeDtypeStruct`s carrying
    their `NamedSharding`)."""
    leaves = jax.tree.leaves(abstract_state)
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)


def model_flops(model: Any, image_shape: tuple[int, int, int]) -> float:
    """FLOPs of one image's forward pass, counted by XLA on the unscanned, unrematerialised
    model (a scanned loop's body would count once)."""
    plain = {k: False for k in ('scan_layers', 'remat') if hasattr(model, k)}
    model = model.clone(**plain)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    lowered = jax.jit(lambda v, images: model.apply(v, images)).lower(variables, x)
    return float(lowered.cost_analysis()['flops'])


def plan(config: ml_collections.ConfigDict, topology: str, num_classes: int,
         devices: Sequence[jax.Device] | None = None, hbm_bytes: int | None = None,
         count_flops: bool = True) -> Plan:
    """Compiles `config`'s train and eval steps for `topology` (its `devices`, when already
    made) and measures them per chip, against `hbm_bytes` per chip (default: `HBM_GIB`).
    The compiler's FLOPs of a step with loops are `looped_flops` (one or two more compiles; 0
    when not `count_flops`). A train step the compiler refuses leaves the eval step
    uncompiled (0 bytes)."""
    config_lib.validate(config)
    devices = topology_devices(topology) if devices is None else devices
    run = setup(config, num_classes, make_mesh(config, devices))
    chips = chip_count(devices)
    per_chip = len(devices) // chips
    seconds, compiled, memory = {}, {}, {}
    for name, eval_ in (('train', False), ('eval', True)):
        if eval_ and not compiled['train']:  # a plan that does not fit: spare the compile
            compiled['eval'], memory['eval'] = None, StepMemory(0, 0, 0)
            continue
        start = time.perf_counter()
        compiled[name], memory[name] = compile_and_measure(run, config, eval=eval_)
        seconds[name] = round(time.perf_counter() - start, 1)
    flops = xla_costs.flops(compiled['train']) if compiled['train'] else 0.0
    if compiled['train'] and has_loops(run.model, config):
        start = time.perf_counter()
        flops = looped_flops(config, num_classes, devices, run.model) if count_flops else 0.0
        seconds['flops'] = round(time.perf_counter() - start, 1)
    train, peak = memory['train'], max(memory['train'].total, memory['eval'].total) * per_chip
    hbm = hbm_bytes or HBM_GIB[topology.partition(':')[0]] * GIB
    image = (config.pp.crop, config.pp.crop, run.model.in_chans)
    return Plan(
        topology=topology, chips=chips, devices=len(devices), mesh=dict(run.mesh.shape),
        parameters=sum(x.size for x in jax.tree.leaves(run.abstract_state.params)),
        hbm_bytes_per_chip=hbm, state_bytes_per_chip=state_bytes(run.abstract_state) * per_chip,
        argument_bytes_per_chip=train.argument * per_chip,
        temp_bytes_per_chip=train.temp * per_chip,
        train_bytes_per_chip=train.total * per_chip,
        eval_bytes_per_chip=memory['eval'].total * per_chip,
        fits=peak <= hbm and not (train.overflow or memory['eval'].overflow),
        headroom_bytes_per_chip=hbm - peak,
        flops_per_step_per_chip=flops * per_chip,
        model_flops_per_step=3 * model_flops(run.model, image) * config.batch,
        overflow=train.overflow or memory['eval'].overflow,
        compile_seconds=seconds)


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of one step per device: its arguments, temporaries, and all it occupies
    (arguments + outputs + temporaries - donated). `overflow` is the TPU compiler's reason when
    it refused the step for want of HBM (the bytes are then its count of what was needed)."""

    argument: int
    temp: int
    total: int
    overflow: str = ''


# What XLA's TPU compiler says when a program does not fit: the temporaries it needs, or all.
_OVERFLOW = (re.compile(r'required for HLO temporaries \(([\d.]+)([KMGT])\)'),
             re.compile(r'Used ([\d.]+)([KMGT]) of'))


def has_loops(model: Any, config: ml_collections.ConfigDict) -> bool:
    """Whether the train step loops (scanned layers, micro-batches): see `looped_flops`."""
    return getattr(model, 'scan_layers', False) or config.accum_steps > 1


def compile_and_measure(run: Setup, config: ml_collections.ConfigDict, *,
                        eval: bool = False) -> tuple[jax.stages.Compiled | None, StepMemory]:
    """`compile_step` and its `StepMemory`; `(None, overflow)` when the TPU compiler refuses
    the step for want of HBM, with the arguments counted from their shapes."""
    try:
        compiled = compile_step(run, config, eval=eval)
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).strip().splitlines()[0]
        found = [(i, m) for i, p in enumerate(_OVERFLOW) if (m := p.search(reason))]
        if 'RESOURCE_EXHAUSTED' not in reason or not found:
            raise
        kind, match = found[0]
        needed = int(float(match.group(1)) * 1024 ** 'KMGT'.index(match.group(2)) * 1024)
        batch = abstract_batch(config, run.model.in_chans, run.batch_sharding, eval=eval)
        arguments = state_bytes(run.abstract_state) + state_bytes(batch)
        temp = needed if kind == 0 else max(needed - arguments, 0)
        return None, StepMemory(arguments, temp, arguments + temp, reason)
    memory = compiled.memory_analysis()
    return compiled, StepMemory(int(memory.argument_size_in_bytes),
                                int(memory.temp_size_in_bytes), xla_costs.footprint(compiled))


def compile_step(run: Setup, config: ml_collections.ConfigDict, *, eval: bool = False
                 ) -> jax.stages.Compiled:
    """`run`'s train (or eval) step compiled for the batch `config` feeds it."""
    batch = abstract_batch(config, run.model.in_chans, run.batch_sharding, eval=eval)
    if eval:
        return run.eval_step.lower(run.abstract_state, batch).compile()
    return run.train_step.lower(run.abstract_state, batch, run.abstract_extras).compile()


def looped_flops(config: ml_collections.ConfigDict, num_classes: int,
                 devices: Sequence[jax.Device], model: Any) -> float:
    """The compiler's FLOPs per device of a train step with loops: XLA counts a loop's body
    once, that of scanned layers (`scan_layers`) and of micro-batches (`accum_steps`). The step
    is compiled for one micro-batch and, scanned, unscanned at depth 1 and 2; the count is
    `accum_steps (F(1) + (depth - 1) (F(2) - F(1)))`, `depth` that of `model`, the run's (the
    optimizer's update, a small part, is then counted `accum_steps` times)."""
    depth = getattr(model, 'depth', None)
    one = [('accum_steps', '1'), ('batch', str(config.batch // config.accum_steps))]
    depths = (1, 2) if config.model.get('scan_layers') else (None,)
    counts = []
    for shallow_depth in depths:
        shallow = one + ([('model.depth', str(shallow_depth)), ('model.scan_layers', 'False')]
                         if shallow_depth else [])
        shallow = config_lib.apply_overrides(copy.deepcopy(config), shallow)
        run = setup(shallow, num_classes, make_mesh(shallow, devices))
        counts.append(xla_costs.flops(compile_step(run, shallow)))
    extrapolated = counts[0] + (depth - 1) * (counts[1] - counts[0]) if depth else counts[0]
    return config.accum_steps * extrapolated


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way to lay a run out: FSDP size, tensor-parallel (`model` axis) size, the rest of
    the devices data-parallel; `remat` (where the model has it), micro-batches, bfloat16
    optimizer state. Layers are scanned where the model can (`scan_layers`: the block is
    compiled once, which keeps big models' compiles short)."""

    fsdp: int
    model: int
    remat: bool
    accum_steps: int
    bfloat16_optimizer: bool

    def flags(self, config: ml_collections.ConfigDict, devices: int) -> list[tuple[str, str]]:
        """The `--config.KEY=VALUE` overrides of this layout for `config`."""
        model = f", ('model', {self.model})" if self.model > 1 else ''
        data = devices // (self.fsdp * self.model)
        flags = [('mesh', f"[('data', {data}), ('fsdp', {self.fsdp}){model}]"),
                 ('accum_steps', str(self.accum_steps)),
                 ('optim_dtype', 'bfloat16' if self.bfloat16_optimizer else config.optim_dtype)]
        if 'scan_layers' in config.model:
            flags.append(('model.scan_layers', 'True'))
        if 'remat' in config.model:
            flags.append(('model.remat', str(self.remat)))
        return flags

    def cost(self) -> float:
        """Recomputation and communication, roughly as a fraction of a step: remat recomputes
        the forward pass (1/3), each doubling of micro-batches or FSDP adds gathers, of the
        model axis all-reduces of activations in every layer."""
        return (self.remat / 3 + 0.1 * math.log2(self.accum_steps) + 0.05 * math.log2(self.fsdp)
                + 0.1 * math.log2(self.model) + 0.01 * self.bfloat16_optimizer)

    def saves_less_than(self, other: Layout) -> bool:
        """Whether every memory-saving choice of this layout is at most `other`'s."""
        return (self.fsdp <= other.fsdp and self.model <= other.model
                and self.remat <= other.remat
                and self.accum_steps <= other.accum_steps
                and self.bfloat16_optimizer <= other.bfloat16_optimizer)


def layouts(config: ml_collections.ConfigDict, devices: int) -> list[Layout]:
    """The layouts the trainer has for `config` on `devices`, cheapest first: FSDP sizes of
    powers of 2, model axes of `MODEL_SIZES`, micro-batch counts that split the batch over the
    data x fsdp devices, remat where the model has it."""
    powers = [2 ** i for i in range(int(math.log2(devices)) + 1) if devices % 2 ** i == 0]
    remats = (False, True) if 'remat' in config.model else (False,)
    bf16 = (False, True) if config.optim_dtype != 'bfloat16' else (True,)
    found = [Layout(fsdp, model, remat, accum, bf)
             for fsdp, model, remat, accum, bf in itertools.product(
                 powers, MODEL_SIZES, remats, (1, 2, 4, 8, 16), bf16)
             if devices % (fsdp * model) == 0
             and config.batch % (accum * devices // model) == 0]
    return sorted(found, key=Layout.cost)


def search(config: ml_collections.ConfigDict, topology: str, num_classes: int,
           devices: Sequence[jax.Device] | None = None, limit: int = 3,
           hbm_bytes: int | None = None,
           log: Callable[[str], None] = lambda line: None,
           ) -> list[tuple[list[tuple[str, str]], Plan]]:
    """Up to `limit` layouts of `config` that fit `topology`, cheapest first, each as
    `(overrides, plan)`: `config` with `overrides` applied as text (as on the command line) is
    what was compiled. Layouts the trainer refuses (a model axis that does not divide the
    heads), whose state alone exceeds HBM, or that save less memory on every count than one
    that did not fit, are not compiled; the FLOPs of steps with loops are counted for those that
    fit."""
    devices = topology_devices(topology) if devices is None else devices
    per_chip = len(devices) // chip_count(devices)
    hbm = hbm_bytes or HBM_GIB[topology.partition(':')[0]] * GIB
    found, failed = [], []
    for layout in layouts(config, len(devices)):
        if len(found) >= limit:
            break
        if any(layout.saves_less_than(f) for f in failed):
            continue
        overrides = layout.flags(config, len(devices))
        candidate = config_lib.apply_overrides(copy.deepcopy(config), overrides)
        try:
            run = setup(candidate, num_classes, make_mesh(candidate, devices))
        except ConfigError as e:
            log(f'refused ({e}): {command_flags(overrides)}')
            continue
        if state_bytes(run.abstract_state) * per_chip > hbm:
            failed.append(layout)
            continue
        result = plan(candidate, topology, num_classes, devices, hbm, count_flops=False)
        log(f'{"fits" if result.fits else "does not fit"}: {command_flags(overrides)}')
        if result.fits:
            if has_loops(run.model, candidate):
                flops = looped_flops(candidate, num_classes, devices, run.model)
                result = dataclasses.replace(result, flops_per_step_per_chip=flops * per_chip)
            found.append((overrides, result))
        else:
            failed.append(layout)
    return found


def command_flags(overrides: Sequence[tuple[str, str]]) -> str:
    """Overrides as shell arguments: `--config.KEY=VALUE`, quoted where needed."""
    return ' '.join(f'--config.{k}={shlex.quote(v)}' for k, v in overrides)


def report(result: Plan) -> str:
    """The plan as text, one quantity a line."""
    gib = lambda b: f'{b / GIB:.2f} GiB'  # noqa: E731
    model_per_chip = result.model_flops_per_step / result.chips
    lines = [
        f'{result.topology}: {result.chips} chips ({result.devices} devices), mesh '
        f'{result.mesh}; {result.parameters:,} parameters',
        f'per chip: parameters + optimizer state {gib(result.state_bytes_per_chip)} '
        f'(arguments {gib(result.argument_bytes_per_chip)}), temporaries '
        f'{gib(result.temp_bytes_per_chip)}',
        f'per chip: train step {gib(result.train_bytes_per_chip)} of '
        f'{gib(result.hbm_bytes_per_chip)} HBM: '
        + (f'fits, {gib(result.headroom_bytes_per_chip)} headroom' if result.fits else
           f'does NOT fit, {gib(-result.headroom_bytes_per_chip)} over (try --search)'),
        'per chip: eval step ' + (gib(result.eval_bytes_per_chip) if 'eval' in
                                   result.compile_seconds else 'not compiled'),
        *([f"XLA's TPU compiler: {result.overflow}"] if result.overflow else []),
        f'FLOPs per step per chip: compiler {result.flops_per_step_per_chip:.4g}, model '
        f'{model_per_chip:.4g} (3 x forward; ratio '
        f'{result.flops_per_step_per_chip / max(model_per_chip, 1):.2f})',
        f'compile: train {result.compile_seconds["train"]} s'
        + (f', eval {result.compile_seconds["eval"]} s' if 'eval' in result.compile_seconds
           else '')
        + (f', FLOPs of the loops {result.compile_seconds["flops"]} s'
           if 'flops' in result.compile_seconds else '')]
    return '\n'.join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """The named flags and the `--config.KEY=VALUE` overrides, as `vit_jax.main` reads them."""
    parser = cli.make_parser('vit_jax.plan', __doc__)
    parser.add_argument('--config', required=True, help='config file, FILE.py[:ARG]')
    parser.add_argument('--topology', required=True, help='TPU topology, e.g. v5e:4x4')
    parser.add_argument('--num_classes', type=int,
                        help="the dataset's class count (default: known or read from metadata)")
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    parser.add_argument('--search', action='store_true',
                        help='try the layouts the trainer has and print those that fit')
    parser.add_argument('--search_limit', type=int, default=3,
                        help='stop the search after this many layouts that fit')
    args, rest = parser.parse_known_args(argv)
    return args, cli.config_overrides(parser, rest)


def main(argv: list[str] | None = None) -> int:
    """Plans the run of `--config` on `--topology` (the CLI); returns the exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
        num_classes = class_count(config, args.num_classes)
        if args.search:
            return _print_search(config, args, num_classes)
        result = plan(config, args.topology, num_classes)
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()) if args.json else report(result))
    return 0


def _print_search(config: ml_collections.ConfigDict, args: argparse.Namespace,
                  num_classes: int) -> int:
    """Prints the layouts that fit, cheapest first (JSON lines with `--json`); 1 if none."""
    log = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    found = search(config, args.topology, num_classes, limit=args.search_limit, log=log)
    if not found:
        print(f'no layout of the trainer fits {args.topology}; use a larger slice or a '
              f'smaller --config.batch', file=sys.stderr)
        return 1
    for overrides, result in found:
        if args.json:
            print(json.dumps({'flags': command_flags(overrides), **result.to_json()}))
        else:
            ratio = result.flops_per_step_per_chip * result.chips / result.model_flops_per_step
            print(f'{result.train_bytes_per_chip / GIB:6.2f} GiB per chip, compiler FLOPs '
                  f'{ratio:.2f} x the model\'s: {command_flags(overrides)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
