"""The lease lock of a workdir in an object store (vit_jax/train/lease.py), and `check()` of the
workdir lock (vit_jax/train/lock.py): leases of a second or two, so that a test takes seconds."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from vit_jax import storage
from vit_jax.errors import WorkdirError
from vit_jax.train.lease import LeaseLock
from vit_jax.train.lock import WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE = 1.0


@pytest.fixture(params=['file', 'gcs', 's3'])
def store(request):
    """Where the workdir lives: on local disk (through tensorstore's `file` driver), in the GCS
    emulator, in moto's S3."""
    return request.param


@pytest.fixture
def workdir(store, tmp_path, request):
    """A new workdir in `store`."""
    if store == 'file':
        return storage.path(tmp_path / 'run')
    return storage.path(request.getfixturevalue(f'{store}_env').bucket() + '/run')


@pytest.fixture
def outage(store, request, monkeypatch):
    """`outage(True)`: the store goes down (the GCS emulator stops; elsewhere every conditional
    read and write fails as against a store that is down); `outage(False)`: it is back."""
    if store == 'gcs':
        gcs = request.getfixturevalue('gcs_env')
        yield lambda on: gcs.stop() if on else gcs.start()
        gcs.start()
        return
    down = threading.Event()

    def failing(real):
        def call(*args, **kwargs):
            if down.is_set():
                raise ValueError('UNAVAILABLE: CURL error Could not connect to server')
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(storage, 'read_versioned', failing(storage.read_versioned))
    monkeypatch.setattr(storage, 'write_if', failing(storage.write_if))
    yield lambda on: down.set() if on else down.clear()


def holder(name, pid=1):
    return {'host': name, 'pid': pid, 'started': 'then'}


def record(path):
    """The record the lock at `path` holds (None when there is none)."""
    data, _ = storage.read_versioned(path)
    return None if data is None else json.loads(data)


def in_use(workdir, name, pid=1):
    """The refusal of a launch that finds `name` holding `workdir`'s lock."""
    return (rf'^{re.escape(str(workdir))} is in use by process {pid} on {name} \(started then, '
            r'lease renewed to [-0-9T:+]+\); wait for that run to finish or stop it, or use '
            r'another --workdir$')


class Worker:
    """A launch in its own process (tests/lease_worker.py)."""

    def __init__(self, path, name, lease=LEASE):
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, 'tests', 'lease_worker.py'), str(path),
             str(lease), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command):
        self.process.stdin.write(command + '\n')
        self.process.stdin.flush()

    def answer(self):
        return self.process.stdout.readline().strip()

    def ask(self, command):
        self.send(command)
        return self.answer()

    def close(self):
        self.process.kill()
        self.process.wait()


def test_a_second_launch_is_refused_naming_the_holder(workdir):
    first = LeaseLock(workdir / 'lock', holder('host-a'), lease_seconds=LEASE)
    first.acquire()
    try:
        held = record(workdir / 'lock')
        assert held['launch'] == first.launch and held['host'] == 'host-a'
        start = time.monotonic()
        with pytest.raises(WorkdirError, match=in_use(workdir, 'host-a')):
            LeaseLock(workdir / 'lock', holder('host-b'), lease_seconds=LEASE).acquire()
        assert time.monotonic() - start < LEASE  # refused at the holder's next renewal
        first.check()
        assert record(workdir / 'lock')['launch'] == first.launch
    finally:
        first.release()
    assert record(workdir / 'lock') is None


def test_renewals_keep_a_live_holder_in_past_its_first_lease(workdir):
    first = LeaseLock(workdir / 'lock', holder('host-a'), lease_seconds=LEASE)
    first.acquire()
    try:
        time.sleep(2 * LEASE)
        assert record(workdir / 'lock')['renewal'] >= 4  # renewed every third of a lease
        for name in ('host-b', 'host-c'):
            with pytest.raises(WorkdirError, match=in_use(workdir, 'host-a')):
                LeaseLock(workdir / 'lock', holder(name), lease_seconds=LEASE).acquire()
        first.check()
    finally:
        first.release()


def test_a_stale_lease_is_taken_over_with_a_warning(workdir, caplog):
    # What a launch that died leaves: a record nobody renews.
    storage.write_if(workdir / 'lock', json.dumps({**holder('gone', 99), 'launch': 'x'}).encode(),
                     storage.read_versioned(workdir / 'lock')[1])
    lock = LeaseLock(workdir / 'lock', holder('host-b'), lease_seconds=LEASE)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    try:
        assert time.monotonic() - start >= LEASE  # a whole lease without a renewal
        assert f'{workdir}: took over the lock of process 99 on gone' in caplog.text
        assert record(workdir / 'lock')['launch'] == lock.launch
        lock.check()
    finally:
        lock.release()


def race(path, launches, lease=LEASE):
    """`launches` locks of `path` taken at once, each from its own thread: those that got it,
    and the errors of the others."""
    locks = [LeaseLock(path, holder(f'host-{i}', i), lease_seconds=lease)
             for i in range(launches)]
    start = threading.Barrier(launches)
    won, refused = [], []

    def launch(lock):
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except WorkdirError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=launch, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, refused


@pytest.mark.parametrize('stale', [False, True], ids=['free', 'stale'])
def test_one_of_eight_racing_threads_takes_the_lock(workdir, stale, caplog):
    for r in range(3):
        path = workdir / str(r) / 'lock'
        if stale:
            storage.write_if(path, json.dumps({**holder('gone', 99), 'launch': 'x'}).encode(),
                             storage.read_versioned(path)[1])
        with caplog.at_level(logging.WARNING):
            won, refused = race(path, 8)
        assert len(won) == 1, f'round {r}: {len(won)} launches took the lock'
        winner = won[0].holder
        assert record(path)['launch'] == won[0].launch
        assert len(refused) == 7
        for message in refused:
            assert re.match(in_use(path.parent, winner['host'], winner['pid']), message), message
        won[0].release()
        assert record(path) is None
    assert caplog.text.count('took over the lock of process 99 on gone') == (3 if stale else 0)


@pytest.mark.parametrize('store', ['gcs'])  # threads race in every store above
def test_one_of_eight_racing_processes_takes_over_a_stale_lock(workdir):
    workers = [Worker(workdir / 'lock', f'host-{i}') for i in range(8)]
    try:
        assert [w.answer() for w in workers] == ['ready'] * 8
        for r in range(3):
            storage.write_if(workdir / 'lock',
                             json.dumps({**holder('gone', 99), 'launch': 'x'}).encode(),
                             storage.read_versioned(workdir / 'lock')[1])
            for w in workers:
                w.send('acquire')
            answers = [w.answer() for w in workers]
            assert answers.count('held') == 1, f'round {r}: {answers}'
            winner = workers[answers.index('held')]
            assert record(workdir / 'lock')['launch'] == json.loads(winner.ask('record'))['launch']
            name = f'host-{workers.index(winner)}'
            for answer in answers:
                assert answer == 'held' or re.match(
                    in_use(workdir, name, winner.process.pid), answer.removeprefix('refused: '))
            assert winner.ask('check') == 'ok'
            assert winner.ask('release') == 'released'
            assert record(workdir / 'lock') is None
    finally:
        for w in workers:
            w.close()


def test_a_holder_paused_past_its_lease_loses_its_lock(workdir, caplog):
    # A holder stopped (a frozen VM, a long pause) for longer than its lease: another launch
    # takes over; the first, resumed, fails its next check in one line and leaves the new
    # holder's lock alone at exit.
    first = Worker(workdir / 'lock', 'host-a')
    try:
        assert first.answer() == 'ready'
        assert first.ask('acquire') == 'held'
        first.process.send_signal(signal.SIGSTOP)
        second = LeaseLock(workdir / 'lock', holder('host-b'), lease_seconds=LEASE)
        with caplog.at_level(logging.WARNING):
            second.acquire()
        assert f'took over the lock of process {first.process.pid} on host-a' in caplog.text
        first.process.send_signal(signal.SIGCONT)
        lost = first.ask('check')
        assert re.fullmatch(
            rf'lost: {re.escape(str(workdir))}/lock was taken over by process 1 on host-b '
            r'\(started then, lease renewed to \S+\) while this run held it; stopping before '
            rf'the next save so that two runs never write to {re.escape(str(workdir))}; make '
            r'sure no other run uses it, then run the same command again to resume from the '
            r'last checkpoint', lost), lost
        assert first.ask('check') == lost  # and stays lost
        assert first.ask('release') == 'released'
        assert record(workdir / 'lock')['launch'] == second.launch
        second.check()
        second.release()
        assert record(workdir / 'lock') is None
    finally:
        first.close()


def test_release_deletes_only_its_own_lock(workdir):
    lock = LeaseLock(workdir / 'lock', holder('host-a'), lease_seconds=LEASE)
    lock.acquire()
    # Another writer replaces the lock (by its generation, as a launch taking over does).
    _, generation = storage.read_versioned(workdir / 'lock')
    other = json.dumps({**holder('host-b'), 'launch': 'y'}).encode()
    storage.write_if(workdir / 'lock', other, generation)
    with pytest.raises(WorkdirError, match=r'lock was taken over by process 1 on host-b'):
        lock.check()
    lock.release()
    assert storage.read_versioned(workdir / 'lock')[0] == other
    # Deleted under the holder: a lost lock too.
    lock = LeaseLock(workdir / 'other' / 'lock', holder('host-a'), lease_seconds=LEASE)
    lock.acquire()
    storage.write_if(lock.path, None, storage.read_versioned(lock.path)[1])
    with pytest.raises(WorkdirError, match=r'^\S+/lock was deleted while this run held it; '):
        lock.check()
    lock.release()
    assert record(lock.path) is None


def test_a_store_down_during_the_run_stops_it_at_the_next_check(workdir, outage, caplog):
    lock = LeaseLock(workdir / 'lock', holder('host-a'), lease_seconds=LEASE)
    lock.acquire()
    outage(True)
    lock.check()  # within the lease, the lock is still ours
    time.sleep(1.5 * LEASE)
    expected = (rf'^could not renew the lease on {re.escape(str(workdir))}/lock for 1 s \(the '
                r'store is unreachable \([^()]+\)\); stopping before the next save, since '
                r'another launch may now take over '
                rf'{re.escape(str(workdir))}; check the network \(or the emulator\), then run '
                r'the same command again$')
    with pytest.raises(WorkdirError, match=expected):
        lock.check()
    outage(False)
    with pytest.raises(WorkdirError, match=expected):  # lost for good, also with the store back
        lock.check()
    lock.release()  # leaves the lock: its lease ran out, not ours to delete
    assert record(workdir / 'lock')['launch'] == lock.launch
    after = LeaseLock(workdir / 'lock', holder('host-b'), lease_seconds=LEASE)
    with caplog.at_level(logging.WARNING):  # the next launch takes it over
        after.acquire()
    after.release()
    assert 'took over the lock of process 1 on host-a' in caplog.text


def test_a_store_down_at_launch_is_one_line(workdir, outage):
    outage(True)
    with pytest.raises(WorkdirError, match=(
            rf'^cannot take the lock {re.escape(str(workdir))}/lock: the store is unreachable '
            r'\([^()]+\); check the network \(or the emulator\), then run the same command '
            r'again$')):
        LeaseLock(workdir / 'lock', holder('host-a'), lease_seconds=LEASE).acquire()


def test_the_local_lock_checks_its_file(tmp_path):
    # On local disk: the lock file removed, replaced by another, or rewritten in place by
    # another holder (issue 27), under a live run.
    for change in ('remove', 'replace', 'rewrite'):
        with WorkdirLock(tmp_path / 'lock') as lock:
            lock.check()
            if change == 'rewrite':
                with open(tmp_path / 'lock', 'r+') as f:
                    f.write('{"host": "other", "pid": 1}')
                    f.truncate()
            else:
                os.remove(tmp_path / 'lock')
            if change == 'replace':
                (tmp_path / 'lock').write_text('{}')
            with pytest.raises(WorkdirError, match=(
                    rf'^{tmp_path}/lock was removed, replaced or rewritten while this run held '
                    r'it; stopping before the next save')):
                lock.check()
        assert os.path.exists(tmp_path / 'lock') == (change != 'remove')  # not ours: left alone
        if change != 'remove':
            os.remove(tmp_path / 'lock')


@pytest.mark.parametrize('store', ['gcs', 's3'])
def test_the_workdir_lock_in_a_bucket_is_a_lease(workdir):
    host = socket.gethostname()
    with WorkdirLock(workdir / 'lock', lease_seconds=LEASE) as lock:
        held = record(workdir / 'lock')
        assert {key: held[key] for key in lock.holder} == lock.holder  # host, pid, started
        with pytest.raises(WorkdirError, match=(
                rf'^{re.escape(str(workdir))} is in use by process {os.getpid()} on {host} ')):
            WorkdirLock(workdir / 'lock', lease_seconds=LEASE).__enter__()
        lock.check()
    assert record(workdir / 'lock') is None
