"""Reading a training run back from its workdir: the model, its trained variables, the config and
the class names, for prediction, analysis, ablation tables and notebooks.

    model, variables, config, classes = load_run('runs/digits')

The model is built as `vit_jax.train.loop.setup` builds it for training, from `config.json`
and `classes.txt`; the variables come from the newest readable checkpoint (or the one at
`step`) through `vit_jax.train.checkpoint.Checkpointer`, read-only: reading a run, also one still
training, writes, moves and deletes nothing. Arrays are placed on this process's first device.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vit_jax.errors import VitJaxError
from vit_jax.train import sharding
from vit_jax.train.checkpoint import Checkpointer
from vit_jax.train.loop import Setup, setup
from vit_jax.train.record import read_classes, read_config
from vit_jax.train.step import TrainState


def run_setup(workdir: str) -> tuple[Setup, ml_collections.ConfigDict, tuple[str, ...]]:
    """`(setup, config, classes)` of the run in `workdir` on this process's first device;
    reads `config.json` and `classes.txt` only (no checkpoint, no data)."""
    config = read_config(workdir)
    classes = read_classes(workdir)
    mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
    return setup(config, len(classes), mesh), config, classes


def load_state(workdir: str, step: int | None = None,
               ) -> tuple[TrainState, Setup, ml_collections.ConfigDict, tuple[str, ...]]:
    """`(state, setup, config, classes)` of the run in `workdir`: the `TrainState` of its
    newest readable checkpoint, or of the one at `step`."""
    run, config, classes = run_setup(workdir)
    checkpointer = Checkpointer(workdir, every=0, keep=1, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise VitJaxError(f'{checkpointer.directory} holds no checkpoint; has the run in '
                              f'{workdir} saved one yet?')
        state, _ = checkpointer.restore(run.abstract_state, config.model_name, step)
    finally:
        checkpointer.close()
    return state, run, config, classes


def load_run(workdir: str, step: int | None = None, *, ema: bool = False,
             ) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict, tuple[str, ...]]:
    """`(model, variables, config, classes)` of the run in `workdir`: `variables` are
    `{'params': ..., **model_state}` of the newest readable checkpoint, or of the one at `step`;
    with `ema`, the moving average of the weights instead (runs with `ema_decay` > 0)."""
    if ema and not read_config(workdir).ema_decay:
        raise VitJaxError(f'the run in {workdir} kept no moving average of the weights '
                          f'(ema_decay is 0); load its weights without ema')
    state, run, config, classes = load_state(workdir, step)
    variables = state.ema if ema else {'params': state.params, **state.model_state}
    return run.model, variables, config, classes
