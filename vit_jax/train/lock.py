"""One run per workdir: `workdir/lock` names the run training there (host, pid, start time).

    with WorkdirLock(workdir):
        ...  # train

Process 0 takes the lock for every process of a run, and every process learns whether it got
it, so all go on or all stop. A second launch is refused in one line naming the holder; a lock
whose holder is gone (same host, no such process) is taken over with a warning. The lock is
released at exit, also when the run stops with an error.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from types import TracebackType

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_jax.errors import WorkdirError

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class WorkdirLock:
    """Holds `workdir/lock` from `__enter__` to `__exit__` (see the module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, 'lock')
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': datetime.datetime.now().astimezone().isoformat(
                           timespec='seconds')}
        self._held = False

    def __enter__(self) -> WorkdirLock:
        error = ''
        if jax.process_index() == 0:
            try:
                self._acquire()
            except WorkdirError as e:
                error = str(e)
        if jax.process_count() > 1:
            refused = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
            if refused and not error:
                error = f'process 0 could not take {self.path}; see its error'
        if error:
            raise WorkdirError(error)
        return self

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):  # gone, or being written
            return None

    def _acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is None:
                    continue
                if other.get('host') == self.holder['host'] and not _alive(other['pid']):
                    log.warning('%s: taking over the lock of process %s on %s (started %s), '
                                'which is gone', self.path, other['pid'], other['host'],
                                other.get('started'))
                    os.remove(self.path)
                    continue
                raise WorkdirError(
                    f'{os.path.dirname(self.path)} is in use by process {other.get("pid")} on '
                    f'{other.get("host")} (started {other.get("started")}); wait for that run '
                    f'to finish or stop it, or use another --workdir (if that process is gone, '
                    f'delete {self.path})') from None
            with os.fdopen(fd, 'w') as f:
                json.dump(self.holder, f)
            self._held = True
            return
        raise WorkdirError(f'could not take {self.path}: other launches keep changing it; '
                           f'run one launch at a time')

    def __exit__(self, kind: type | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._held and self._read() == self.holder:
            os.remove(self.path)
        self._held = False
