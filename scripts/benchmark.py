"""Training and inference throughput of vit_jax beside timm, in one run on one device.

    python scripts/benchmark.py --models=ViT-B_16,swin_tiny_patch4_window7_224,convnext_tiny \
        --mode=train,infer --batch=256 --img_size=224 --steps=20 --warmup=5 --compile

One train step = forward + backward + AdamW on synthetic on-device data `[batch, img, img, 3]`.
vit_jax: `make_train_step` jitted with the state donated, timed with `jax.block_until_ready`
after the loop only. timm (when torch and timm import): bf16 autocast, channels-last, fused
AdamW on CUDA, optionally `torch.compile`. FLOPs per step are XLA's count of our step lowered
for the CPU (`xla_costs.cpu_flops`, right on any device) and serve both frameworks' TFLOP/s.
`--aot=h200|h100` compiles the same steps for that GPU without one (`JAX_PLATFORMS=cpu` is set)
and prints what XLA chose and the bytes it assigns instead. Imports neither TensorFlow nor
ml_collections.

"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# JAX would otherwise take 75% of the GPU at start-up and leave torch too little.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import vit_jax  # noqa: E402
from vit_jax.train import xla_costs  # noqa: E402
from vit_jax.train.step import create_train_state, make_train_step  # noqa: E402

# vit_jax names whose timm model differs in name; other names are the same in both.
TIMM_NAMES = {'ViT-Ti_16': 'vit_tiny_patch16_224', 'ViT-S_16': 'vit_small_patch16_224',
              'ViT-B_16': 'vit_base_patch16_224', 'ViT-B_32': 'vit_base_patch32_224',
              'ViT-L_16': 'vit_large_patch16_224', 'ViT-H_14': 'vit_huge_patch14_224'}
GIB = 2 ** 30
# `--aot`: XLA's GPU target-config specs (scripts/gpu_specs/README.md) of each GPU compiled for.
GPU_SPECS = {'h200': 'h200.txtpb', 'h100': 'h100_sxm.txtpb'}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='ViT-B_16,swin_tiny_patch4_window7_224,convnext_tiny',
                   help='comma-separated vit_jax names; "ours=timm_name" sets the timm model')
    p.add_argument('--mode', default='train,infer', help='train, infer or both')
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--img_size', type=int, default=224)
    p.add_argument('--steps', type=int, default=20, help='timed steps')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps before timing')
    p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
    p.add_argument('--compile', action='store_true', help='torch.compile the timm model')
    p.add_argument('--no_timm', action='store_true', help='benchmark vit_jax only')
    p.add_argument('--aot', choices=sorted(GPU_SPECS),
                   help='compile the steps for this GPU on any machine (no device, nothing '
                        'timed): print the kernels XLA chose and the bytes it assigns')
    p.add_argument('--peak_tflops', type=float, default=794.0,
                   help='device peak for the fraction column (H100 bf16 matmul); 0 omits it')
    return p.parse_args(argv)


def model_pairs(spec: str) -> list[tuple[str, str]]:
    """`'a,b=c'` -> `[(a, timm name of a), (b, c)]`."""
    pairs = []
    for item in filter(None, spec.split(',')):
        ours, _, timm_name = item.partition('=')
        pairs.append((ours, timm_name or TIMM_NAMES.get(ours, ours)))
    return pairs


def timed(run: Callable[[int], Any], steps: int, warmup: int) -> float:
    """Seconds for `run(steps)` after `run(warmup)`; `run` returns what to wait for."""
    jax.block_until_ready(run(warmup))
    start = time.perf_counter()
    jax.block_until_ready(run(steps))
    return time.perf_counter() - start


def device_peak_bytes() -> float | None:
    """The JAX device's high-water mark since the process started (None on CPU)."""
    stats = jax.devices()[0].memory_stats()
    return float(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def build_step(name: str, mode: str, args: argparse.Namespace
               ) -> tuple[Callable[..., Any], tuple[Any, ...], tuple[int, ...], Callable[[], Any]]:
    """`mode`'s step of vit_jax model `name`: `(function, abstract arguments, donated argument
    numbers, make)`, where `make()` returns the arguments on the default device. A train step
    is `make_train_step` with AdamW and the state donated; an inference step `model.apply`."""
    model = vit_jax.create_model(name, num_classes=1000, img_size=args.img_size, dtype=args.dtype)
    shape = (args.batch, args.img_size, args.img_size, 3)
    tx = optax.adamw(1e-4, weight_decay=0.05)
    init = functools.partial(create_train_state, model, tx, image_shape=(1,) + shape[1:])

    def make_train():
        images_key, labels_key, init_key = jax.random.split(jax.random.key(0), 3)
        return (jax.jit(init)(init_key),
                {'image': jax.random.normal(images_key, shape, jnp.float32),
                 'label': jax.random.randint(labels_key, (args.batch,), 0, 1000)})

    if mode == 'train':
        return make_train_step(model, tx), jax.eval_shape(make_train), (0,), make_train

    def make_infer():
        state, batch = make_train()
        return {'params': state.params, **state.model_state}, batch['image']

    return (functools.partial(model.apply, train=False), jax.eval_shape(make_infer), (),
            make_infer)


def bench_ours(name: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """vit_jax `name`: img/s, FLOPs per step and memory for `mode` ('train' or 'infer')."""
    step, abstract, donate, make = build_step(name, mode, args)
    inputs = make()
    compiled = jax.jit(step, donate_argnums=donate).lower(*inputs).compile()

    def run(n):
        nonlocal inputs
        out = None
        for _ in range(n):
            out = compiled(*inputs)
            if mode == 'train':
                inputs = (out[0], *inputs[1:])
        return out

    seconds = timed(run, args.steps, args.warmup)
    return {'img_s': args.batch * args.steps / seconds,
            'flops': xla_costs.cpu_flops(step, *abstract), 'peak': device_peak_bytes(),
            'xla': xla_costs.footprint(compiled)}


def gpu_mesh(gpu: str) -> jax.sharding.Mesh:
    """A one-device mesh of GPU `gpu` (a key of `GPU_SPECS`), compiled for without a device."""
    from jax.experimental import topologies

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_specs', GPU_SPECS[gpu])
    with open(path) as f:
        topology = topologies.get_topology_desc(platform='cuda', target_config=f.read(),
                                                topology='1x1x1')
    return topologies.make_mesh(topology, (1,), ('x',))


def hlo_kernels(hlo: str) -> dict[str, Any]:
    """What a compiled GPU program's text `hlo` runs: its custom calls `{target: count}`, its
    fusion count, and whether cuDNN's fused attention runs forward and backward."""
    calls = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo))
    attention = [t for t in calls if t.startswith('__cudnn$fmha')]
    return {'custom_calls': dict(calls), 'fusions': len(re.findall(r' fusion\(', hlo)),
            'cudnn_fwd': any('Backward' not in t for t in attention),
            'cudnn_bwd': any('Backward' in t for t in attention)}


def compile_ours(name: str, mode: str, args: argparse.Namespace, mesh: jax.sharding.Mesh,
                 ) -> dict[str, Any]:
    """vit_jax `name`'s `mode` step compiled for `mesh`'s device: its kernels (`hlo_kernels`),
    argument and temporary bytes (XLA's memory analysis) and FLOPs per step."""
    step, abstract, donate, _ = build_step(name, mode, args)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    placed = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    compiled = jax.jit(step, donate_argnums=donate).trace(*placed).lower().compile()
    memory = compiled.memory_analysis()
    return {**hlo_kernels(compiled.as_text()), 'args': memory.argument_size_in_bytes,
            'temp': memory.temp_size_in_bytes, 'flops': xla_costs.cpu_flops(step, *abstract)}


def aot_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """A markdown table of `compile_ours` results: one line per (model, mode)."""
    head = ['model', 'mode', 'batch', 'cuDNN attention fwd', 'bwd', 'custom calls', 'fusions',
            'args GiB', 'temp GiB', 'total GiB', 'GFLOP/img']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    yes = lambda b: 'yes' if b else 'no'  # noqa: E731
    for r in rows:
        calls = ', '.join(f'{t} x{n}' for t, n in sorted(r['custom_calls'].items()))
        cells = [r['model'], r['mode'], str(args.batch), yes(r['cudnn_fwd']), yes(r['cudnn_bwd']),
                 calls or 'none', str(r['fusions']), f"{r['args'] / GIB:.2f}",
                 f"{r['temp'] / GIB:.2f}", f"{(r['args'] + r['temp']) / GIB:.2f}",
                 f"{r['flops'] / args.batch / 1e9:.3g}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def aot_main(args: argparse.Namespace) -> None:
    """`--aot`: each model's steps compiled for the GPU `args.aot`, with this machine's CPU as
    JAX's only device (Triton GEMMs off: their tiles cannot be autotuned without a device)."""
    mesh = gpu_mesh(args.aot)
    print(f'compiled for {mesh.devices.flat[0].device_kind} without a device, dtype {args.dtype}, '
          f'img {args.img_size}', flush=True)
    rows = []
    for name, _ in model_pairs(args.models):
        for mode in filter(None, args.mode.split(',')):
            start = time.perf_counter()
            rows.append({'model': name, 'mode': mode, **compile_ours(name, mode, args, mesh)})
            print(f'{name} {mode}: compiled in {time.perf_counter() - start:.0f} s', flush=True)
    print(aot_table(rows, args))


def import_timm():
    """timm, or None when torch or timm cannot be imported. Where torchvision does not import on
    its own (the CPU build of torch beside PyPI's torchvision), the `torchvision::nms`/`qnms`
    schemas are defined first; where it does, defining them would abort the process."""
    try:
        import torch
        imports = subprocess.run([sys.executable, '-c', 'import torchvision'],
                                 capture_output=True).returncode == 0
        if not imports and not hasattr(torch.ops.torchvision, 'nms'):
            library = torch.library.Library('torchvision', 'DEF')
            for op in ('nms', 'qnms'):
                library.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
            import_timm.library = library  # keeps the definitions alive
        import timm
    except ImportError:
        return None
    return timm


def bench_timm(timm, name: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """timm `name`: img/s and peak CUDA memory for `mode`, bf16 autocast and channels-last."""
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    torch.set_float32_matmul_precision('high')  # TF32 on GPU, as XLA's default
    try:
        model = timm.create_model(name, num_classes=1000, img_size=args.img_size)
    except TypeError:  # families without an `img_size` argument (ConvNeXt)
        model = timm.create_model(name, num_classes=1000)
    model = model.to(device, memory_format=torch.channels_last).train(mode == 'train')
    step_model = torch.compile(model) if args.compile else model
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).to(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                 enabled=args.dtype == 'bfloat16')
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                                  fused=cuda or None)

    def run(n):
        for _ in range(n):
            if mode == 'train':
                with autocast():
                    loss = F.cross_entropy(step_model(images), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode(), autocast():
                    step_model(images)
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(run, args.steps, args.warmup)
    return {'img_s': args.batch * args.steps / seconds,
            'peak': float(torch.cuda.max_memory_allocated()) if cuda else None}


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """A markdown table: one line per (model, mode, framework)."""
    head = ['model', 'mode', 'batch', 'framework', 'img/s', 'ours/timm', 'GFLOP/img',
            'TFLOP/s']
    head += ['of peak'] if args.peak_tflops else []
    head += ['peak GiB', 'XLA GiB']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    gib = lambda b: 'n/a' if b is None else f'{b / GIB:.3g}'  # noqa: E731
    for r in rows:
        tflops = r['flops'] / args.batch * r['img_s'] / 1e12
        img_s = f"{r['img_s']:,.1f}" if r['img_s'] >= 100 else f"{r['img_s']:.3g}"
        cells = [r['model'], r['mode'], str(args.batch), r['framework'], img_s,
                 r.get('ratio', ''), f"{r['flops'] / args.batch / 1e9:.3g}", f'{tflops:.3g}']
        cells += [f'{tflops / args.peak_tflops:.1%}'] if args.peak_tflops else []
        cells += [gib(r['peak']), gib(r.get('xla'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.aot:
        # Read when the backends start: only the CPU runs, the GPU is compiled for.
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                   ' --xla_gpu_enable_triton_gemm=false')
        jax.config.update('jax_platforms', 'cpu')
        return aot_main(args)
    timm = None if args.no_timm else import_timm()
    print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), '
          f'dtype {args.dtype}, img {args.img_size}, {args.steps} steps after {args.warmup}, '
          f'timm: {"off" if timm is None else timm.__version__}'
          f'{" + torch.compile" if timm and args.compile else ""}', flush=True)
    rows = []
    for ours_name, timm_name in model_pairs(args.models):
        for mode in filter(None, args.mode.split(',')):
            ours = {'model': ours_name, 'mode': mode, 'framework': 'vit_jax',
                    **bench_ours(ours_name, mode, args)}
            rows.append(ours)
            if timm is not None:
                theirs = {'model': timm_name, 'mode': mode, 'flops': ours['flops'],
                          'framework': 'timm' + (' compiled' if args.compile else ''),
                          **bench_timm(timm, timm_name, mode, args)}
                ours['ratio'] = f"{ours['img_s'] / theirs['img_s']:.2f}x"
                rows.append(theirs)
            print(f"{ours_name} {mode}: {ours['img_s']:,.1f} img/s {ours.get('ratio', '')}",
                  flush=True)
    print(table(rows, args))


if __name__ == '__main__':
    main()
