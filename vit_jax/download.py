"""Remote weight files, each downloaded once into a local cache and checked on every use.

    path = download.fetch('https://host/ViT-B_16.npz')  # a local file, read as any other

The cache is `storage.cache_dir()` (`$VIT_JAX_CACHE`, default `~/.cache/vit_jax`). A URL's file
lives at `weights/<16 hex digits of the URL's sha256>/<file name>`, with `<file name>.json`
beside it recording the URL and the size and sha256 of the bytes downloaded (and the version of
an object in a store, see `fetch`). Every use checks both, with no network request, so a warm
cache works offline. A file that no longer matches its record (a flipped byte, cut short) is
downloaded again, with a warning. A file put there by hand (on a machine without network
access) is adopted: its size and sha256 are recorded on first use.

A download streams into a temporary file in the same folder, is checked (its length against
`Content-Length`, its sha256 against a pinned one) and then renamed into place, so no half file
is ever read. A lock file in the folder lets one process at a time download a URL; the others
then find it in the cache.

Sources: `http(s)://` through urllib (the `*_proxy` variables apply); `gs://` and `s3://`
through `vit_jax.storage` (credentials, emulators), except `gs://` without gcsfs installed,
read from Google's public HTTPS endpoint (public buckets such as `gs://vit_models`). Every
failure is a one-line `StorageError` naming the URL and the cache file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO

import fsspec

from vit_jax import storage
from vit_jax.errors import StorageError
from vit_jax.version import __version__

log = logging.getLogger(__name__)

HTTP_SCHEMES = ('http', 'https')
GCS_PUBLIC = 'https://storage.googleapis.com'  # gs://BUCKET/KEY of a public bucket over HTTPS
TIMEOUT_S = 60  # seconds an HTTP server may stay silent before the download fails
CHUNK = 1 << 20
# Local failures writing the cache (the others are the source's).
CACHE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
ABSENT = 'absent'


def cache_path(url: str, filename: str | None = None) -> str:
    """Where the cache keeps the file of `url` (named `filename`, default the URL's last part)."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = filename or urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(url).path))
    folder = os.fspath(storage.cache_dir() / 'weights' / key)
    return os.path.join(folder, name.replace(os.sep, '_') or 'weights')


def fetch(url: str, *, sha256: str | None = None, filename: str | None = None,
          check_source: bool = False) -> str:
    """The local copy of `url` in the cache (downloaded on first use, or when the copy no longer
    matches its record or the pinned `sha256`); a one-line `StorageError` when it cannot be had.

    `check_source=True` also asks a `gs://` or `s3://` store for the object's version (size and
    generation or ETag: one metadata request) and downloads it again when it changed; when the
    store cannot be reached, the cached copy is used, with a warning. Published files never
    change, so their names skip this; a run's `weights.npz` in a bucket may.
    """
    kind = storage.scheme(url)
    if kind not in HTTP_SCHEMES + storage.SCHEMES:
        raise StorageError(f'{url}: unknown scheme {kind}://; weights come from a local path, a '
                           f'published name (python -m vit_jax.hub --list), gs://, s3://, '
                           f'http:// or https://')
    target = cache_path(url, filename)
    try:
        version = _version(url, target) if check_source else None
        if _problem(target, url, sha256, version) is None:
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with _lock(target, url):
            problem = _problem(target, url, sha256, version)  # another process may have it
            if problem is None:
                return target
            if problem != ABSENT:
                log.warning('%s: %s; downloading it again from %s', target, problem, url)
            _download(url, target, sha256, version, problem)
    except OSError as e:
        if e.errno not in CACHE_ERRNOS:
            raise
        cause, hint = storage.describe(e)
        raise StorageError(f'cannot write the cache file {target} ({cause}): {hint}, or set '
                           f'VIT_JAX_CACHE to another folder') from None
    return target


# ----------------------------------------------------------------------------- the cache


def _problem(target: str, url: str, pinned: str | None, version: str | None) -> str | None:
    """What is wrong with the cached `target` (`ABSENT` when there is none), or None when it
    matches its record, `pinned` and the source's `version` (when known). A file without a
    record is adopted."""
    if not os.path.isfile(target):
        return ABSENT
    size, record = os.path.getsize(target), _read_record(target)
    if record is not None and version and record.get('version') != version:
        return f'the source changed since it was downloaded (version {version})'
    if record is not None and size != record.get('size'):
        return f'its size is {size:,} bytes, {record.get("size"):,} when downloaded'
    digest = _sha256(target)
    if record is not None and digest != record.get('sha256'):
        return 'its sha256 differs from the one recorded when it was downloaded'
    if pinned and digest != pinned:
        return f'its sha256 {digest} is not the published {pinned}'
    if record is None:  # put there by hand
        _write_record(target, url, size, digest, version)
    return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(target: str) -> dict | None:
    try:
        with open(target + '.json') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_record(target: str, url: str, size: int, digest: str, version: str | None) -> None:
    record = {'url': url, 'size': size, 'sha256': digest}
    storage.write_atomic(storage.path(target + '.json'),
                         json.dumps({**record, 'version': version} if version else record))


@contextlib.contextmanager
def _lock(target: str, url: str) -> Iterator[None]:
    """Holds the lock of `target`'s folder: one download of a URL at a time, across processes."""
    with open(os.path.join(os.path.dirname(target), '.lock'), 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info('waiting for another process downloading %s', url)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ----------------------------------------------------------------------------- downloading


def _download(url: str, target: str, pinned: str | None, version: str | None,
              problem: str) -> None:
    """Downloads `url` to `target` through a temporary file, checked before it is renamed."""
    fd, tmp = tempfile.mkstemp(prefix='.partial-', dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, 'wb') as out:
            size, digest = _copy(url, out, target, problem)
        if pinned and digest != pinned:
            raise StorageError(f'{url}: the download has sha256 {digest}, not the published '
                               f'{pinned}; it was not kept (the file at the source changed, or '
                               f'the download was altered)')
        _write_record(target, url, size, digest, version)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would keep the file from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info('downloaded %s (%s bytes) to %s', url, f'{size:,}', target)


def _copy(url: str, out: IO[bytes], target: str, problem: str) -> tuple[int, str]:
    """`(size, sha256)` of `url`'s bytes, written to `out`."""
    digest, size = hashlib.sha256(), 0
    try:
        with _open(url) as (stream, length):
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if length is not None and size != length:
            raise ConnectionError(f'the connection closed after {size:,} of {length:,} bytes')
    except Exception as e:  # noqa: BLE001 -- every way a source fails is told in one line
        if isinstance(e, OSError) and e.errno in CACHE_ERRNOS:
            raise
        cause, hint = _describe(e)
        cached = (f'nothing is cached at {target}' if problem == ABSENT else
                  f'the copy cached at {target} is damaged ({problem})')
        raise StorageError(f'cannot download {url} ({cause}); {cached}: {hint}, or put the file '
                           f'there by hand') from None
    return size, digest.hexdigest()


def _version(url: str, target: str) -> str | None:
    """`'<size>:<generation or ETag>'` of the object at `url` in a store, or None: not read
    through a store (http, public gs:// without gcsfs), or the store cannot be reached (a
    warning when a copy is cached; else the download tells why)."""
    if not _through_storage(url):
        return None
    try:
        filesystem, key = fsspec.core.url_to_fs(url)
        filesystem.invalidate_cache(key)
        info = filesystem.info(key)
    except Exception as e:  # noqa: BLE001 -- told in the warning, or by the download
        if os.path.isfile(target):
            log.warning('cannot ask %s for its version (%s); using the copy cached at %s', url,
                        _describe(e)[0], target)
        return None
    return f'{info.get("size")}:{info.get("generation") or info.get("ETag") or info.get("mtime")}'


def _through_storage(url: str) -> bool:
    """Whether `url` is read through the storage layer (gs://, s3://)."""
    kind = storage.scheme(url)
    return kind in storage.SCHEMES and (kind != 'gs' or gcsfs_installed())


@contextlib.contextmanager
def _open(url: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """`(stream, length or None)` of the bytes at `url`."""
    if _through_storage(url):
        with storage.path(url).open('rb') as f:
            yield f, None
        return
    if storage.scheme(url) == 'gs':
        url = f'{GCS_PUBLIC}/{url[len("gs://"):]}'
    request = urllib.request.Request(url, headers={'User-Agent': f'vit_jax/{__version__}'})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.headers.get_content_type() == 'text/html':
            raise _WebPage()
        length = response.headers.get('Content-Length')
        yield response, int(length) if length else None


def gcsfs_installed() -> bool:
    """Whether gs:// can be read through the storage layer (else: the public HTTPS endpoint)."""
    return importlib.util.find_spec('gcsfs') is not None


class _WebPage(Exception):
    """A server answered with a web page (a login or download-confirmation page)."""


def _describe(error: Exception) -> tuple[str, str]:
    """`(cause, what to do)` of a failed download, in words."""
    if isinstance(error, _WebPage):
        return ('the server sent a web page, not the file (a login or download-confirmation '
                'page)', 'download it in a browser')
    if isinstance(error, urllib.error.HTTPError):
        hint = {404: 'check the URL (no file is there)',
                401: 'the source wants a login', 403: 'the source refuses access'}
        return f'HTTP {error.code} {error.reason}', hint.get(error.code, 'try again later')
    if isinstance(error, urllib.error.URLError):
        return (f'the source is unreachable: {error.reason}',
                'check the network (and the *_proxy variables), then run the same command again')
    if isinstance(error, (http.client.HTTPException, ConnectionError, TimeoutError)):
        return (f'the download broke off: {str(error) or type(error).__name__}',
                'check the network, then run the same command again')
    if isinstance(error, ImportError):  # fsspec's: 'Install s3fs to access S3'
        return (str(error) or f'{error.name} is not installed',
                "pip install 'vit_jax[gcs]' (gs://) or 'vit_jax[s3]' (s3://)")
    return storage.describe(error)
