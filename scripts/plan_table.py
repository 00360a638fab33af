"""The TPU tables of docs/results/fits.md, measured with `vit_jax.plan` on this machine (libtpu,
no TPU).

    python scripts/plan_table.py --kind=v5e --models=b16,l16,h14,g14,G14,e14 --batch=4096
    python scripts/plan_table.py --topology=v5e:2x2 --config=swin.py:base,imagenet2012 \
        --config=convnext.py:base,imagenet2012 \
        --config=dhvt.py:small_imagenet_patch16,imagenet2012 [--set accum_steps=4]

With `--models` (short names of `configs/vit.py`): for each model, the smallest slice of TPU
`--kind` where `vit_jax.plan.search` finds a layout that fits at global batch `--batch` (224 px,
bfloat16 compute, ImageNet's 1000 classes), and that layout. With `--config`: each config on
`--topology`, as it is or with `--set KEY=VALUE` overrides. Prints one
markdown row per model as it is measured, with the seconds the compiles took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # libtpu only compiles

from vit_jax import config as config_lib  # noqa: E402
from vit_jax import plan  # noqa: E402

# The slices of each kind, smallest first (JAX's topology names).
SLICES = {'v5e': ('v5e:2x2', 'v5e:2x4', 'v5e:4x4', 'v5e:4x8', 'v5e:8x8', 'v5e:8x16',
                  'v5e:16x16'),
          'v5p': ('v5p:2x2x1', 'v5p:2x2x2', 'v5p:2x2x4', 'v5p:2x4x4', 'v5p:4x4x4', 'v5p:4x4x8',
                  'v5p:4x8x8'),
          'v6e': ('v6e:2x2', 'v6e:2x4', 'v6e:4x4', 'v6e:4x8', 'v6e:8x8', 'v6e:8x16',
                  'v6e:16x16')}
HEADER = ('| model | parameters | slice | layout | state / chip | train step / chip | '
          'compiler / model FLOPs | compile s |\n|---|---|---|---|---|---|---|---|')


def log(line: str) -> None:
    """The search's progress, on stderr."""
    print(f'{time.strftime("%H:%M:%S")} {line}', file=sys.stderr, flush=True)


def layout(result: plan.Plan, overrides: list[tuple[str, str]]) -> str:
    """The layout in words: the mesh, micro-batches, remat, optimizer state's dtype."""
    flags = dict(overrides)
    mesh = ' x '.join(f'{axis} {size}' for axis, size in result.mesh.items() if size > 1)
    return (f"{mesh or 'one device'}, {flags.get('accum_steps', '1')} micro-batches, remat "
            f"{'on' if flags.get('model.remat') == 'True' else 'off'}")


def row(name: str, topology: str, overrides: list[tuple[str, str]], result: plan.Plan,
        seconds: float) -> str:
    gib = lambda b: f'{b / plan.GIB:.2f} GiB'  # noqa: E731
    ratio = result.flops_per_step_per_chip * result.chips / result.model_flops_per_step
    fit = '' if result.fits else ' (does not fit)'
    return (f'| {name} | {result.parameters:,} | {topology} | {layout(result, overrides)} | '
            f'{gib(result.state_bytes_per_chip)} | {gib(result.train_bytes_per_chip)} of '
            f'{gib(result.hbm_bytes_per_chip)}{fit} | {ratio:.2f} | {seconds:.0f} |')


def smallest_slice(model: str, kind: str, batch: int) -> str:
    """The row of `model` on the smallest slice of `kind` where a layout fits."""
    config = config_lib.apply_overrides(
        config_lib.load_config(f'configs/vit.py:{model},imagenet2012'),
        [('batch', str(batch)), ('batch_eval', '1024'), ('accum_steps', '1'),
         ('pp.crop', '224'), ('model.dtype', 'bfloat16')])
    start = time.perf_counter()
    for topology in SLICES[kind]:
        found = plan.search(config, topology, 1000, limit=1, log=log)
        if found:
            overrides, result = found[0]
            return row(config.model_name, topology, overrides, result,
                       time.perf_counter() - start)
    return f'| {config.model_name} | | no {kind} slice up to {SLICES[kind][-1]} | | | | | |'


def as_configured(spec: str, topology: str, overrides: list[tuple[str, str]]) -> str:
    """The row of config `spec` with `overrides` on `topology`."""
    config = config_lib.apply_overrides(config_lib.load_config(f'configs/{spec}'), overrides)
    start = time.perf_counter()
    result = plan.plan(config, topology, 1000)
    return row(config.model_name, topology, overrides, result, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', help='short names of configs/vit.py, comma-separated')
    parser.add_argument('--kind', default='v5e', choices=sorted(SLICES))
    parser.add_argument('--batch', type=int, default=4096)
    parser.add_argument('--config', action='append', default=[],
                        help='FILE.py:ARG under configs/, planned as it is (repeatable)')
    parser.add_argument('--topology', default='v5e:2x2')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='a config override for every --config (repeatable)')
    args = parser.parse_args()
    print(HEADER, flush=True)
    for model in (args.models or '').split(',') if args.models else ():
        print(smallest_slice(model, args.kind, args.batch), flush=True)
    overrides = [tuple(item.split('=', 1)) for item in args.set]
    for spec in args.config:
        print(as_configured(spec, args.topology, overrides), flush=True)


if __name__ == '__main__':
    sys.exit(main())
