"""A lock for a workdir in an object store (`gs://`, `s3://`), where `flock` cannot reach.

    lease = LeaseLock(storage.path('gs://bucket/run/lock'), holder)
    lease.acquire()   # or a WorkdirError naming the holder
    lease.check()     # before each save: a WorkdirError once the lock is no longer this run's
    lease.release()

The lock is one object naming its holder (host, pid, start time, a random launch id). Every
write to it is conditional on the generation last read (`storage.write_if`): a create where
there is none, a compare-and-swap otherwise, so of launches racing for it exactly one wins.
While the run lives, a daemon thread renews it every `lease_seconds / 3`; each renewal is a
new generation (the record counts its renewals, so that S3, whose generation is a hash of the
contents, sees a change too).

No two hosts' clocks are compared. A launch that finds the lock watches its generation: a
change proves the holder alive, and the launch is refused; a generation unchanged for
`lease_seconds`, timed by the launch's own monotonic clock from when its read returned, is
stale and is taken over by a compare-and-swap on that generation. The holder counts its lease
from before it sent its last successful renewal, so it knows itself lost no later than another
launch may take over. The wall-clock times in the record (`renewed`, `expires`) are for people.
The price: taking over a stale lock waits a lease (60 s); a refusal waits for the holder's next
renewal (at most 20 s).
"""

from __future__ import annotations

import datetime
import json
import logging
import secrets
import threading
import time
from typing import Any

from etils import epath

from vit_jax import storage
from vit_jax.errors import WorkdirError

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
# The longest a launch waits for one request while it takes or releases the lock.
REQUEST_SECONDS = 30.0


def _clock(seconds: float) -> str:
    """A wall-clock time, local, to the second."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec='seconds')


def _parse(data: bytes | None) -> dict | None:
    """The record a lock holds, or None when it holds none (or something else)."""
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _who(record: dict | None) -> str:
    """The holder a record names, in words."""
    if record is None:
        return 'another launch (its lock cannot be read)'
    return (f'process {record.get("pid")} on {record.get("host")} (started '
            f'{record.get("started")}, lease renewed to {record.get("expires")})')


class LeaseLock:
    """The lock object at `path`, held by `holder` (a dict of what names the run) while its
    lease of `lease_seconds` is renewed; see the module docstring."""

    def __init__(self, path: epath.Path, holder: dict[str, Any], *,
                 lease_seconds: float = LEASE_SECONDS):
        self.path = path
        self.holder = dict(holder)
        self.lease_seconds = lease_seconds
        self.launch = secrets.token_hex(8)
        self._generation = b''      # of our last write
        self._renewals = 0
        self._valid_until = 0.0     # monotonic: the lease is ours until then
        self._lost: str | None = None
        self._failure: BaseException | None = None  # of the last renewal, when it failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _workdir(self) -> str:
        return str(self.path.parent)

    def acquire(self) -> None:
        """Takes the lock (waiting up to a lease to tell a stale one from a live one) and starts
        renewing it; a `WorkdirError` naming the holder when another run holds it."""
        try:
            self._acquire()
        except (OSError, ValueError) as e:  # tensorstore's errors are ValueErrors
            cause, hint = storage.describe(e)
            raise WorkdirError(f'cannot take the lock {self.path}: {cause}; {hint}') from None
        self._thread = threading.Thread(target=self._renew, name=f'lease of {self.path}',
                                        daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        data, generation = self._read(REQUEST_SECONDS)
        seen = time.monotonic()
        if data is not None:
            log.warning('%s names %s; waiting up to %g s for a renewal before taking it over',
                        self.path, _who(_parse(data)), self.lease_seconds)
        for _ in range(3):
            while data is not None and time.monotonic() - seen < self.lease_seconds:
                time.sleep(self.lease_seconds / 10)
                now, now_generation = self._read(REQUEST_SECONDS)
                if now_generation != generation:
                    if now is not None:  # renewed (or taken by another launch): alive
                        raise self._in_use(now)
                    data, generation = None, now_generation  # released meanwhile
            if self._write(generation, REQUEST_SECONDS):
                if data is not None:
                    log.warning('%s: took over the lock of %s, not renewed for %g s',
                                self._workdir, _who(_parse(data)), self.lease_seconds)
                return
            data, generation = self._read(REQUEST_SECONDS)  # another launch wrote first
            if data is not None:
                raise self._in_use(data)
        raise WorkdirError(f'could not take {self.path}: other launches keep changing it; run '
                           f'one launch at a time')

    def check(self) -> None:
        """Raises a `WorkdirError` when the lock is no longer this run's: taken over by another
        launch, deleted, or not renewed for a lease. Call it before each save."""
        if self._lost is None:
            try:
                data, _ = self._read(min(REQUEST_SECONDS, self.lease_seconds))
            except (OSError, ValueError) as e:  # ours until the lease runs out
                self._failure = self._failure or e
            else:
                if not self._ours(data):
                    self._lost = self._taken(data)
        if self._lost is None and time.monotonic() >= self._valid_until:
            self._lost = self._unrenewed()
        if self._lost is not None:
            raise WorkdirError(self._lost)

    def release(self) -> None:
        """Stops renewing, and deletes the lock while its generation is still ours."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        # Only while the lease runs: a delete on S3 is a check, then a delete.
        if self._lost is not None or time.monotonic() >= self._valid_until:
            return
        try:
            if storage.write_if(self.path, None, self._generation,
                                timeout=REQUEST_SECONDS) is None:
                data, generation = self._read(REQUEST_SECONDS)
                if self._ours(data):  # a renewal whose answer was lost
                    storage.write_if(self.path, None, generation, timeout=REQUEST_SECONDS)
        except (OSError, ValueError) as e:
            log.warning('could not release the lock %s (%s); the next launch takes it over '
                        'once its lease (%g s) has run out', self.path, storage.describe(e)[0],
                        self.lease_seconds)

    # ------------------------------------------------------------------------------- helpers

    def _read(self, timeout: float) -> tuple[bytes | None, bytes]:
        return storage.read_versioned(self.path, timeout=max(timeout, 0.01))

    def _write(self, generation: bytes, timeout: float) -> bool:
        """Writes this run's record if the lock is still at `generation`: whether it did."""
        sent = time.monotonic()
        self._renewals += 1
        now = time.time()
        record = {**self.holder, 'launch': self.launch, 'renewal': self._renewals,
                  'lease_seconds': self.lease_seconds, 'renewed': _clock(now),
                  'expires': _clock(now + self.lease_seconds)}
        written = storage.write_if(self.path, json.dumps(record).encode(), generation,
                                   timeout=max(timeout, 0.01))
        if written is None:
            return False
        self._generation, self._valid_until = written, sent + self.lease_seconds
        return True

    def _ours(self, data: bytes | None) -> bool:
        record = _parse(data)
        return record is not None and record.get('launch') == self.launch

    def _renew(self) -> None:
        """The renewal thread: renews every third of a lease, retries a failed renewal every
        tenth, until released or lost."""
        wait = self.lease_seconds / 3
        while not self._stop.wait(wait) and self._lost is None:
            wait = self.lease_seconds / 10
            try:
                if not self._write(self._generation, self._valid_until - time.monotonic()):
                    data, generation = self._read(self._valid_until - time.monotonic())
                    if not self._ours(data):
                        self._lost = self._taken(data)
                        return
                    self._generation = generation  # a renewal whose answer was lost
                    continue
            except Exception as e:  # whatever failed: retry until the lease runs out
                self._failure = e
                if time.monotonic() >= self._valid_until:
                    self._lost = self._unrenewed()
                    return
                continue
            self._failure = None
            wait = self.lease_seconds / 3

    # ------------------------------------------------------------------------------ messages

    def _in_use(self, data: bytes) -> WorkdirError:
        return WorkdirError(f'{self._workdir} is in use by {_who(_parse(data))}; wait for that '
                            f'run to finish or stop it, or use another --workdir')

    def _taken(self, data: bytes | None) -> str:
        what = (f'{self.path} was deleted' if data is None else
                f'{self.path} was taken over by {_who(_parse(data))}')
        return (f'{what} while this run held it; stopping before the next save so that two runs '
                f'never write to {self._workdir}; make sure no other run uses it, then run the '
                f'same command again to resume from the last checkpoint')

    def _unrenewed(self) -> str:
        cause, hint = (storage.describe(self._failure) if self._failure is not None else
                       ('no renewal answered in time', 'run the same command again'))
        return (f'could not renew the lease on {self.path} for {self.lease_seconds:g} s '
                f'({cause}); stopping before the next save, since another launch may now take '
                f'over {self._workdir}; {hint}')
