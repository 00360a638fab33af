"""What XLA says of a compiled program, per device: its FLOPs and the bytes it occupies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax._src.lib import _jax


def cpu_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of one call `fn(*args)` (arrays or `ShapeDtypeStruct`s) for any device: XLA's CPU
    cost analysis of the program lowered for the CPU, before optimisation. (The analysis of a
    program compiled for a GPU leaves out its cuBLAS and cuDNN calls.)"""
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    hlo = jax.jit(fn).trace(*specs).lower(lowering_platforms=('cpu',)).compiler_ir('hlo')
    cpu = jax.local_devices(backend='cpu')[0].client
    return float(_jax.hlo_module_cost_analysis(cpu, hlo.as_hlo_module())['flops'])


def flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of one call, per device (0 when the backend does not say; XLA's GPU analysis
    leaves out cuBLAS calls, and a scanned loop body counts once)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', 0.0))


def footprint(compiled: jax.stages.Compiled) -> int | None:
    """Bytes XLA assigns to one call, per device: arguments + outputs + temporaries - aliased
    (donated); None when the backend has no memory analysis."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return None
