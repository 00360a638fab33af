"""Preemption: SIGTERM (the notice clusters and cloud VMs send before they take a machine away)
asks the run to save a checkpoint and stop.

On one process, a signal handler sets a flag. On several, JAX's preemption service (started by
`jax.distributed.initialize`, also for CPU processes with gloo collectives) handles it: its
C++ notifier catches SIGTERM on whichever processes get it (polling about once a second), posts
the notice to the coordination service, and every process then reports the step of its latest
`reached_preemption_sync_point` call; the agreed stop step is the largest plus one. SLURM,
Kubernetes and TPU maintenance signal every process, but one signalled process is enough.
`requested` must therefore be called at every step, in order, by the loop alone: the service
keeps only the latest step it was asked about (`vit_jax.train.checkpoint` stops orbax from
asking it too). The run stops at most about a second plus a step after the signal.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`with PreemptionWatch() as watch: ... if watch.requested(step): save and stop`.

    `requested` must be called at every step on every process.
    """

    def __init__(self) -> None:
        self._signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def requested(self, step: int) -> bool:
        """Whether every process should save at `step` and stop."""
        if jax.process_count() == 1:
            return self._signalled
        return multihost_utils.reached_preemption_sync_point(step)

    def __exit__(self, kind: type | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
