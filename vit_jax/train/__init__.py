"""Training: pure steps (`step`), optimizers (`optim`), mesh placement (`sharding`),
checkpoints (`checkpoint`), metric output (`metrics`) and the loop (`loop`).

Names are imported on first use, so `vit_jax.train.step` works without ml_collections (the
loop and the optimizers need it; the benchmark does not).
"""

import importlib

_HOMES = {'evaluate': 'loop', 'train': 'loop', 'TrainState': 'step',
          'create_train_state': 'step', 'make_eval_step': 'step', 'make_train_step': 'step'}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f'vit_jax.train.{_HOMES[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
