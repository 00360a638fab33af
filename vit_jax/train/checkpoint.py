"""Checkpoints of the whole `TrainState` in `workdir/checkpoints/<step>` with orbax.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a
save interrupted at any point is never taken as the latest; leftovers are cleaned up.
"""

from __future__ import annotations

import logging
import os

import orbax.checkpoint as ocp
from flax import serialization

from vit_jax.train.step import TrainState

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the newest `keep`, restores the latest."""

    def __init__(self, workdir: str, *, every: int, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def maybe_save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
        """Saves `state` (asynchronously) at every `every`-th step, or when `force`."""
        if not force and not (self.every and step % self.every == 0):
            return False
        if step in self._manager.all_steps():
            return False
        self._manager.save(step, args=ocp.args.StandardSave(serialization.to_state_dict(state)),
                           force=True)
        return True

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        """The checkpoint at `step` (default: latest), shaped and placed like `template`."""
        step = self.latest_step() if step is None else step
        target = serialization.to_state_dict(template)
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
        return serialization.from_state_dict(template, restored)

    def close(self) -> None:
        """Waits for pending saves to finish."""
        self._manager.wait_until_finished()
        self._manager.close()
