"""One run per workdir: `workdir/lock` names the run training there (host, pid, start time).

    with WorkdirLock(workdir / 'lock') as lock:   # `vit_jax.train.workdir.Workdir.lock()`
        ...  # train
        lock.check()  # before each save: a WorkdirError once the lock is no longer this run's

Process 0 takes the lock for every process of a run, and every process learns whether it got
it, so all go on or all stop. A second launch is refused in one line naming the holder; a lock
whose holder is gone (same host, no such process) is taken over with a warning. The lock is
released at exit, also when the run stops with an error.

How: the holder keeps the file open with an exclusive `flock` while it runs, so exactly one
open file holds it, and the kernel (on NFS the server) frees it when the holder dies. A lock is
created with `O_CREAT | O_EXCL`, atomic on local and NFS (v3 and later) file systems, so two
hosts starting at once never both create one. A stale lock is taken over in place: the launch
that gets its `flock` rewrites it and every other launch finds it held and is refused; nothing
is removed or renamed aside, which would leave a moment in which a slower launch removes or
moves the new holder's file and takes a lock of its own. The file's contents must still prove
the holder gone (same host, no such process): where `flock` is local to each host (NFS mounted
with `nolock`, some FUSE file systems), a live holder on another host is invisible to it, and
its lock is refused, never taken over. A file system without `flock` falls back to that proof
alone, as unsafe against two launches taking over at the same moment as it always was.

In an object store (`gs://`, `s3://`), shared by the hosts of a TPU pod, there is no `flock`:
there the lock is a lease renewed while the run lives (`vit_jax.train.lease`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from types import TracebackType

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_jax import storage
from vit_jax.errors import WorkdirError
from vit_jax.train.lease import LEASE_SECONDS, LeaseLock

log = logging.getLogger(__name__)

# `flock` errors of a file system that has no `flock`.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _flock(fd: int, *, wait: bool) -> bool:
    """Takes an exclusive `flock` on `fd` (waiting for it with `wait`): False when another
    open file holds it; True also where the file system has no `flock`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
    return True


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` is the file open as `fd` (not removed, nor replaced by another)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _parse(data: bytes) -> dict | None:
    """The holder a lock file names, or None while it is empty or being written."""
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get('pid'), int) else None


def _on_process_0(step: Callable[[], None], elsewhere: str) -> None:
    """Runs `step` on process 0; when it raises a `WorkdirError`, every process raises one
    (`elsewhere` on the others), so that all go on or all stop."""
    error = ''
    if jax.process_index() == 0:
        try:
            step()
        except WorkdirError as e:
            error = str(e)
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
        if failed and not error:
            error = elsewhere
    if error:
        raise WorkdirError(error)


class WorkdirLock:
    """Holds the lock file `path` (a workdir's `lock`) from `__enter__` to `__exit__` (see the
    module docstring); in an object store, as a lease of `lease_seconds`."""

    def __init__(self, path: str | os.PathLike, *, lease_seconds: float = LEASE_SECONDS):
        self.path = os.fspath(path)
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': datetime.datetime.now().astimezone().isoformat(
                           timespec='seconds')}
        self._fd: int | None = None
        self._lease = (LeaseLock(storage.path(self.path), self.holder, lease_seconds=lease_seconds)
                       if storage.is_remote(self.path) else None)

    def __enter__(self) -> WorkdirLock:
        _on_process_0(self._acquire, f'process 0 could not take {self.path}; see its error')
        return self

    def check(self) -> None:
        """Raises a `WorkdirError` (on every process) when the lock is no longer this run's:
        removed, replaced, rewritten or taken over by another launch. Call it before each
        save."""
        _on_process_0(self._check, f'process 0 lost the lock {self.path}; see its error')

    def _check(self) -> None:
        if self._lease is not None:
            self._lease.check()
        elif self._fd is not None and not self._holds():
            raise WorkdirError(
                f'{self.path} was removed, replaced or rewritten while this run held it; '
                f'stopping before the next save, since another launch may now write to '
                f'{os.path.dirname(self.path)}; make sure no other run uses it, then run the '
                f'same command again to resume from the last checkpoint')

    def _holds(self) -> bool:
        """Whether the lock file is still the one this run holds, naming this run."""
        return _same_file(self._fd, self.path) and \
            _parse(os.pread(self._fd, 1 << 16, 0)) == self.holder

    def _acquire(self) -> None:
        if self._lease is not None:
            self._lease.acquire()
            return
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if self._take_over():
                    return
                continue  # released meanwhile
            _flock(fd, wait=True)  # a launch reading the empty file holds it for a moment
            self._hold(fd)
            return
        raise WorkdirError(f'could not take {self.path}: other launches keep changing it; '
                           f'run one launch at a time')

    def _take_over(self) -> bool:
        """Takes over the existing lock when its holder is gone; False when it was released
        meanwhile, a `WorkdirError` naming the holder otherwise."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if not _flock(fd, wait=False):
                raise self._in_use(self._read_held())
            if not _same_file(fd, self.path):  # released and removed before our flock
                os.close(fd)
                return False
            other = _parse(os.pread(fd, 1 << 16, 0))
            if other is None or other.get('host') != self.holder['host'] or (
                    _alive(other['pid']) and other['pid'] != os.getpid()):
                raise self._in_use(other)
            log.warning('%s: taking over the lock of process %s on %s (started %s), which is '
                        'gone', self.path, other['pid'], other['host'], other.get('started'))
            self._hold(fd)
            return True
        except BaseException:
            os.close(fd)
            raise

    def _hold(self, fd: int) -> None:
        """Writes this run into the lock open (and `flock`ed) as `fd`, and keeps it open."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _read_held(self) -> dict | None:
        """The holder a held lock names; a launch taking it over may still be writing it."""
        other = None
        for _ in range(50):
            try:
                with open(self.path, 'rb') as f:
                    other = _parse(f.read())
            except OSError:
                other = None
            if other is not None and (other.get('host') != self.holder['host']
                                      or _alive(other['pid'])):
                break
            time.sleep(0.02)
        return other

    def _in_use(self, other: dict | None) -> WorkdirError:
        holder = (f'process {other.get("pid")} on {other.get("host")} (started '
                  f'{other.get("started")})' if other else
                  'another launch, which is writing its lock')
        return WorkdirError(
            f'{os.path.dirname(self.path)} is in use by {holder}; wait for that run to finish '
            f'or stop it, or use another --workdir (if that process is gone, delete '
            f'{self.path})')

    def __exit__(self, kind: type | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._lease is not None:
            self._lease.release()
        if self._fd is None:
            return
        try:
            if self._holds():
                os.remove(self.path)
        finally:
            os.close(self._fd)  # after the removal: a launch waiting for it then retries
            self._fd = None
