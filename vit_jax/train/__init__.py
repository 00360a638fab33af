"""Training: pure steps (`step`), optimizers (`optim`), mesh placement (`sharding`),
checkpoints (`checkpoint`), metric output (`metrics`) and the loop (`loop`)."""

from vit_jax.train.loop import evaluate, train
from vit_jax.train.step import TrainState, create_train_state, make_eval_step, make_train_step

__all__ = ['TrainState', 'create_train_state', 'evaluate', 'make_eval_step', 'make_train_step',
           'train']
