"""Where files live: a local folder or an object store (`gs://`, `s3://`), behind one path type.

    path = storage.path('gs://bucket/run')       # an `etils.epath.Path`; local paths made absolute
    storage.write_atomic(path / 'config.json', text)

Every module that reads or writes a file of a run, a dataset or weights goes through `path`,
so a URL is never made absolute, and an unknown scheme is one line. Object stores are reached
through fsspec (gcsfs, s3fs) for files and tensorstore for orbax's arrays and for the
conditional writes a lock needs (`read_versioned`, `write_if`).

Emulators: `STORAGE_EMULATOR_HOST=http://host:port` (what Google's own clients read) is all it
takes to point every layer at a GCS emulator; importing this module sets the variables each
other layer reads (tensorstore's `TENSORSTORE_GCS_HTTP_URL`, array_record's
`CLOUD_STORAGE_EMULATOR_ENDPOINT`) from it. `AWS_ENDPOINT_URL` does the same for S3. etils.epath
is told to use fsspec (`EPATH_USE_TF=false`): TensorFlow's gfile ignores emulators.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

from etils import epath

from vit_jax.errors import DataError, StorageError, VitJaxError

SCHEMES = ('gs', 's3')


def configure_environment(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Sets the variables each storage layer reads from the two a user sets
    (`STORAGE_EMULATOR_HOST`, `AWS_ENDPOINT_URL`); a variable already set is kept."""
    environ.setdefault('EPATH_USE_TF', 'false')
    gcs = environ.get('STORAGE_EMULATOR_HOST')
    if gcs:
        if '://' not in gcs:
            gcs = f'http://{gcs}'
        environ.setdefault('TENSORSTORE_GCS_HTTP_URL', gcs)
        environ.setdefault('CLOUD_STORAGE_EMULATOR_ENDPOINT', gcs)
        # tensorstore takes this token instead of looking for Google credentials
        environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')
        # gcsfs otherwise probes each bucket over gRPC for a minute
        environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')


class _GcsfsNoise(logging.Filter):
    """Drops gcsfs's log of a request out of retries (a traceback per request) and of a bucket
    whose type it could not learn (a warning per file opened, when there are no credentials):
    the error reaches the caller, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(('_request out of retries',
                                                   'Could not determine bucket type'))


logging.getLogger('gcsfs').addFilter(_GcsfsNoise())


def _no_listing_cache() -> None:
    """gcsfs and s3fs list each folder afresh: their listing cache would hide the objects other
    processes (the other hosts of a run, a later launch's lock) wrote since."""
    import fsspec

    for protocol in ('gs', 'gcs', 's3', 's3a'):
        fsspec.config.conf.setdefault(protocol, {}).setdefault('use_listings_cache', False)


configure_environment()
_no_listing_cache()


def scheme(location: str | os.PathLike) -> str | None:
    """`'gs'`, `'s3'`, `'http'`, ... of a URL, or None for a local path."""
    text = os.fspath(location)
    head, sep, _ = text.partition('://')
    return head.lower() if sep and head.isalnum() else None


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` is a URL (an object store or a web address), not a local path."""
    return scheme(location) is not None


def path(location: str | os.PathLike) -> epath.Path:
    """`location` as a path: a `gs://` or `s3://` URL as it is, a local path made absolute
    (`~` expanded); any other scheme is a one-line `StorageError`."""
    kind = scheme(location)
    if kind is None:
        return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(location))))
    if kind not in SCHEMES:
        raise StorageError(f'{os.fspath(location)}: unknown scheme {kind}://; use a local path, '
                           f'gs://bucket/... or s3://bucket/...')
    return epath.Path(os.fspath(location))


def cache_dir() -> epath.Path:
    """vit_jax's local cache folder: `$VIT_JAX_CACHE`, default `~/.cache/vit_jax`; what vit_jax
    downloads or derives (prepared offline datasets, local copies of bucket data) lives here."""
    location = os.environ.get('VIT_JAX_CACHE') or os.path.join('~', '.cache', 'vit_jax')
    if is_remote(location):
        raise StorageError(f'VIT_JAX_CACHE={location}: the cache must be a local folder; set '
                           'VIT_JAX_CACHE to a folder on this machine.')
    return path(location)


def files_below(folder: epath.Path) -> list[str]:
    """Every file below `folder`, sub-folders included, sorted: local paths (symlinked folders
    followed; a folder reached twice, by a symlink loop or two links, is a `DataError`) or URLs
    (one listing of the whole prefix; etils.epath's `walk` drops the scheme)."""
    if not is_remote(folder):
        files, seen = [], {}
        for root, _, names in os.walk(os.fspath(folder), followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                raise DataError(f'{root} is {seen[real]} again (a symlink loop, or two links to '
                                f'one folder), so its files would count twice; remove the link')
            seen[real] = root
            files += [os.path.join(root, name) for name in names]
        return sorted(files)
    import fsspec

    fs, prefix = fsspec.core.url_to_fs(os.fspath(folder))
    return sorted(f'{scheme(folder)}://{name}' for name in fs.find(prefix))


def write_atomic(target: epath.Path, data: str | bytes) -> None:
    """Writes `data` to `target` so that readers see the old file or the whole new one: through
    a temporary file on local disk; one upload (atomic by itself) in an object store."""
    payload = data.encode() if isinstance(data, str) else data
    if is_remote(target):
        target.write_bytes(payload)
        return
    fd, tmp = tempfile.mkstemp(prefix='.partial-', dir=os.fspath(target.parent))
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
        os.replace(tmp, os.fspath(target))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def upload_tree(source: str | os.PathLike, target: epath.Path, *, last: str = '') -> None:
    """Copies the local folder `source` into `target`, file by file, the file named `last`
    after all others (a reader that looks for it finds the rest); when a copy fails, the files
    already copied are deleted (as far as the store lets) and the error raised."""
    root = pathlib.Path(source)
    files = sorted((p for p in root.rglob('*') if p.is_file()), key=lambda p: p.name == last)
    copied = []
    try:
        for file in files:
            dest = target / file.relative_to(root).as_posix()
            if not is_remote(target):
                dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(file.read_bytes())
            copied.append(dest)
    except BaseException:
        for dest in copied:
            with contextlib.suppress(Exception):
                dest.unlink()
        raise


def bucket_missing(location: str | os.PathLike) -> bool:
    """Whether `location` is in an object store whose bucket does not exist."""
    kind = scheme(location)
    if kind not in SCHEMES:
        return False
    bucket = os.fspath(location).split('://', 1)[1].partition('/')[0]
    try:
        return not epath.Path(f'{kind}://{bucket}').exists()
    except Exception:  # noqa: BLE001 -- unreachable or no permission: not known to be missing
        return False


# ------------------------------------------------------------ conditional writes (for a lock)


def kvstore_spec(folder: str) -> dict[str, Any]:
    """The tensorstore kvstore spec of `folder`, a local path or a `gs://` / `s3://` URL.

    For S3 the endpoint comes from `AWS_ENDPOINT_URL` (tensorstore does not read it), and the
    credentials from the environment when `AWS_ACCESS_KEY_ID` is set there (tensorstore's
    default chain would first look for `~/.aws` files, logging each one missing)."""
    kind = scheme(folder)
    if kind is None:
        return {'driver': 'file', 'path': folder.rstrip('/') + '/'}
    bucket, _, key = folder.split('://', 1)[1].partition('/')
    spec: dict[str, Any] = {'driver': {'gs': 'gcs'}.get(kind, kind), 'bucket': bucket}
    if key.strip('/'):
        spec['path'] = key.strip('/') + '/'
    if kind == 's3':
        if os.environ.get('AWS_ENDPOINT_URL'):
            spec['endpoint'] = os.environ['AWS_ENDPOINT_URL']
        if os.environ.get('AWS_ACCESS_KEY_ID'):
            spec['aws_credentials'] = {'type': 'environment'}
    return spec


def _kvstore_spec(target: epath.Path) -> tuple[dict[str, Any], str]:
    """`(tensorstore kvstore spec of target's folder, key)`."""
    folder, _, key = os.fspath(target).rpartition('/')
    return kvstore_spec(folder), key


# A few quick retries: a store that is down shows as its cause within seconds, not as a wait
# of minutes (tensorstore's default: 32 retries up to 32 s apart); the lock retries on its own.
_RETRIES = {'max_retries': 5, 'initial_delay': '100ms', 'max_delay': '2s'}


def _wait(future: Any, timeout: float | None) -> Any:
    """The result of a tensorstore future, or a `TimeoutError` saying how long it waited (and
    the operation cancelled: tensorstore retries no more, a request already sent may land)."""
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        future.cancel()
        raise TimeoutError(f'no answer in {round(timeout or 0, 2):g} s') from None


def _kvstore(target: epath.Path, timeout: float | None) -> tuple[Any, str]:
    import tensorstore as ts

    spec, key = _kvstore_spec(target)
    retries = {f'{spec["driver"]}_request_retries': _RETRIES} if spec['driver'] != 'file' else {}
    return _wait(ts.KvStore.open(spec, context=ts.Context(retries)), timeout), key


def read_versioned(target: epath.Path, *, timeout: float | None = None
                   ) -> tuple[bytes | None, bytes]:
    """`(contents or None when absent, generation)` of `target`; the generation names this
    version of it (or its absence) for `write_if`. A `TimeoutError` after `timeout` seconds."""
    store, key = _kvstore(target, timeout)
    result = _wait(store.read(key), timeout)
    return (result.value if result.state == 'value' else None), result.stamp.generation


def write_if(target: epath.Path, data: bytes | None, generation: bytes, *,
             timeout: float | None = None) -> bytes | None:
    """Writes `data` to `target` (deletes it when None) only if it is still at `generation`
    (from `read_versioned`; the generation of its absence makes this a create): the new
    generation, or None when another writer changed it first. Atomic in the store itself
    (GCS `ifGenerationMatch`, S3 `If-Match`/`If-None-Match`, a lock file on local disk),
    except a delete on S3: tensorstore checks the generation, then deletes. A `TimeoutError`
    after `timeout` seconds, when the write may still happen."""
    store, key = _kvstore(target, timeout)
    written = _wait(store.write(key, data, if_equal=generation), timeout).generation
    return written or None


# ----------------------------------------------------------------------------------- errors

_HINTS = {
    errno.ENOSPC: 'free some space',
    errno.EDQUOT: 'free some of your quota',
    errno.EROFS: 'use a writable {what}',
    errno.EACCES: 'use a {what} this user may access',
    errno.EPERM: 'use a {what} this user may access',
    errno.EISDIR: 'give a file, not a folder, as {what}',
    errno.ENOTDIR: 'a part of the path is a file, not a folder: fix {what}',
}


@contextlib.contextmanager
def reporting(doing: str, location: str | os.PathLike, what: str = 'location') -> Iterator[None]:
    """Turns a file or store operation on `location` in the block that fails into a one-line
    `StorageError`, `DOING: CAUSE; WHAT TO DO` (`what` as in `describe`)."""
    try:
        yield
    except VitJaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- any store failure: one line
        cause, hint = describe(e, what, location)
        raise StorageError(f'{doing}: {cause}; {hint}') from None


# How to give each store credentials (or point it at an emulator).
_LOG_IN = {
    'gs': 'run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS '
          '(STORAGE_EMULATOR_HOST for an emulator)',
    's3': 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE '
          '(AWS_ENDPOINT_URL for another S3 endpoint)',
}


def describe(error: BaseException, what: str = 'location',
             location: str | os.PathLike | None = None) -> tuple[str, str]:
    """`(cause, what to do)` of a failed file or object-store operation, in words; `what`
    names the location in the advice (e.g. `--workdir`); given the `location` operated on, a
    missing object in a missing bucket is told as the bucket."""
    if isinstance(error, FileNotFoundError) and location is not None and \
            bucket_missing(location):
        return 'no such bucket', 'create the bucket or fix its name'
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ''
    name = type(error).__name__
    lowered = f'{name} {text}'.lower()
    if isinstance(error, OSError) and error.errno in _HINTS:
        return error.strerror or text or name, _HINTS[error.errno].format(what=what)
    if any(word in lowered for word in ('credential', 'refresherror', 'anonymous caller',
                                        '401')):
        return 'no credentials for the store', _LOG_IN.get(
            scheme(location) if location is not None else None, ' or '.join(_LOG_IN.values()))
    if 'nosuchbucket' in lowered or 'bucket does not exist' in lowered or (
            'bucket' in lowered and ('not found' in lowered or '404' in lowered)):
        return 'no such bucket', 'create the bucket or fix its name'
    if isinstance(error, PermissionError) or '403' in lowered or 'forbidden' in lowered or \
            'permission' in lowered or 'accessdenied' in lowered:
        return 'permission denied', (f'grant this account access, or use a {what} this user '
                                     f'may write to')
    if '429' in lowered or 'quota' in lowered or 'slowdown' in lowered:
        return 'the store refused for quota or rate', 'wait, or raise the quota'
    if isinstance(error, (ConnectionError, TimeoutError)) or any(
            word in lowered for word in ('connect', 'timed out', 'timeout', 'unavailable',
                                         'network', 'name resolution')):
        return f'the store is unreachable ({text or name})', \
            'check the network (or the emulator), then run the same command again'
    if isinstance(error, FileNotFoundError):
        return 'no such file', 'check the path'
    return f'{name}: {text}' if text else name, f'use a {what} this user may write to'
