"""A local GCS for the tests: gcp-storage-emulator with the GCS behaviours tensorstore, orbax
and gcsfs rely on patched in.

`python tests/gcs_emulator.py --port P [--data-dir D]` serves the JSON API on 127.0.0.1:P until
killed or its parent ends; with a data dir the objects outlive a restart. `GET /_requests`
answers the number of requests served so far, by kind and by client (`{"by_kind": {"POST upload":
12, ...}, "by_client": {"tensorstore": 30, ...}}`), without counting itself.
"""

import argparse
import collections
import json
import os
import re
import threading
import time
from functools import partial
from http import HTTPStatus, server

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

_lock = threading.Lock()
_requests = {'by_kind': collections.Counter(), 'by_client': collections.Counter()}


def _param(request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _precondition(request, storage, bucket: str, name: str, *, read: bool) -> HTTPStatus | None:
    """The status GCS answers when the request's `ifGeneration(Not)Match` /
    `ifMetagenerationMatch` conditions fail on the object's current state, else None.

    GCS: generation 0 stands for "no live object", so `ifGenerationMatch=0` creates only; a failed
    condition is 412 Precondition Failed, except a read's `ifGenerationNotMatch`, which is 304.
    """
    try:
        obj = storage.get_file_obj(bucket, name)
        generation, metageneration = obj['generation'], obj['metageneration']
    except NotFound:
        generation, metageneration = '0', None
    if (match := _param(request, 'ifGenerationMatch')) is not None and match != generation:
        return HTTPStatus.PRECONDITION_FAILED
    if (meta := _param(request, 'ifMetagenerationMatch')) is not None and meta != metageneration:
        return HTTPStatus.PRECONDITION_FAILED
    if _param(request, 'ifGenerationNotMatch') == generation:
        return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    return None


def _failed(request, response, status: HTTPStatus) -> None:
    _ = request.data  # Reads the body: closing a socket with unread data resets the connection.
    response.status = status
    if status == HTTPStatus.PRECONDITION_FAILED:
        response.json({'error': {'code': 412, 'message': 'Precondition Failed',
                                 'errors': [{'reason': 'conditionNotMet'}]}})


def _upload_target(request, storage) -> tuple[str, str]:
    """(bucket, object name) of an upload request of any kind."""
    if upload_id := _param(request, 'upload_id'):  # a resumable session's chunk
        obj = storage.get_resumable_file_obj(upload_id)
        return obj['bucket'], obj['name']
    name = _param(request, 'name')
    if name is None and _param(request, 'uploadType') == 'multipart':
        name = request.data['meta'].get('name')
    elif name is None and isinstance(request.data, dict):  # resumable: the name in the body
        name = request.data.get('name')
    return request.params['bucket_name'], name


def _conditional(handler, target, *, read: bool):
    """`handler`, answering 412 (or 304) instead when the request's generation conditions fail.

    GCS checks `ifGenerationMatch` on media, multipart and resumable uploads (at the session's
    start and again when its last chunk lands), on deletes and on reads.
    """

    def conditional(request, response, storage, *args, **kwargs):
        try:
            bucket, name = target(request, storage)
        except NotFound:
            return handler(request, response, storage, *args, **kwargs)
        if status := _precondition(request, storage, bucket, name, read=read):
            return _failed(request, response, status)
        return handler(request, response, storage, *args, **kwargs)

    return conditional


# Buckets that refuse writes as GCS does for a request without credentials (401), for an
# account without `storage.objects.create` (403) and when a quota or rate limit is reached (429):
# a test names its bucket with the prefix.
_REFUSALS = {'anonymous-': (401, 'required', 'Anonymous caller does not have '
                            'storage.objects.create access to the Google Cloud Storage object.'),
             'denied-': (403, 'forbidden', 'runner@project.iam.gserviceaccount.com does not have '
                         'storage.objects.create access to the Google Cloud Storage object.'),
             'quota-': (429, 'rateLimitExceeded', 'The project exceeded the rate limit for '
                        'creating and deleting buckets or writing objects.')}


def _refusing(handler):
    """`handler`, answering a bucket named after a `_REFUSALS` prefix as GCS refuses a write."""

    def refusing(request, response, storage, *args, **kwargs):
        bucket = request.params.get('bucket_name', '')
        for prefix, (code, reason, message) in _REFUSALS.items():
            if bucket.startswith(prefix):
                _ = request.data  # read the body, as _failed does
                response.status = HTTPStatus(code)
                response.json({'error': {'code': code, 'message': message,
                                         'errors': [{'reason': reason, 'message': message}]}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return refusing


def _object_target(request, storage) -> tuple[str, str]:
    return request.params['bucket_name'], request.params['object_id']


def _with_generation_headers(download):
    """`download`, answering `x-goog-generation` / `x-goog-metageneration` as GCS does on every
    media read: tensorstore takes an object's generation from them ("Malformed
    StorageGeneration" on 0 without them)."""

    def download_with_headers(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            obj = storage.get_file_obj(request.params['bucket_name'],
                                       request.params['object_id'])
            response['x-goog-generation'] = obj['generation']
            response['x-goog-metageneration'] = obj['metageneration']

    return download_with_headers


def _with_suffix_ranges(download):
    """`download`, answering a suffix range (`Range: bytes=-N`, the last N bytes) as GCS does:
    array_record's reader reads a file's footer so, and the emulator sends the whole object,
    which it takes for the footer of any file over 1 MiB ("Invalid Riegeli/records file")."""

    def download_suffix(request, response, storage, *args, **kwargs):
        suffix = re.fullmatch(r'\s*bytes=-(\d+)\s*', request.get_header('range', None) or '')
        if suffix:
            try:
                size = len(storage.get_file(request.params['bucket_name'],
                                            request.params['object_id']))
            except NotFound:
                size = 0  # download answers 404
            start = f'bytes={max(0, size - int(suffix[1]))}-'
            plain = request.get_header
            request.get_header = lambda key, default=None: (
                start if key.lower() == 'range' else plain(key, default))
        download(request, response, storage, *args, **kwargs)

    return download_suffix


def _with_offsets(ls):
    """`ls`, keeping only the names in [startOffset, endOffset) as GCS's `objects.list` does:
    tensorstore's range delete lists with these bounds and deletes every name it gets back."""

    def ls_with_offsets(request, response, storage, *args, **kwargs):
        ls(request, response, storage, *args, **kwargs)
        start, end = _param(request, 'startOffset'), _param(request, 'endOffset')
        if response.status != HTTPStatus.OK or (start is None and end is None):
            return
        listing = json.loads(response._content)

        def inside(name: str) -> bool:
            return (start is None or name >= start) and (end is None or name < end)

        listing['items'] = [obj for obj in listing['items'] if inside(obj['name'])]
        listing['prefixes'] = [prefix for prefix in listing['prefixes'] if inside(prefix)]
        response.json(listing)

    return ls_with_offsets


def _move(request, response, storage, *args, **kwargs):
    """GCS's `objects.move` (`POST .../o/SOURCE/moveTo/o/DESTINATION`), which the emulator lacks:
    gcsfs renames with it, and retries the emulator's 501 for half a minute before it falls back
    to copy and delete."""
    bucket = request.params['bucket_name']
    _ = request.data
    try:
        moved = objects._copy(request.base_url, storage, bucket, request.params['object_id'],
                              bucket, request.params['dest_object_id'])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage.delete_file(bucket, request.params['object_id'])
    response.json(moved)


def _move_target(request, storage) -> tuple[str, str]:
    return request.params['bucket_name'], request.params['dest_object_id']


def _kind(method: str, request) -> str:
    """A request's kind for the counter, e.g. 'POST upload', 'GET media', 'GET list'."""
    path = request.path
    if path.startswith('/upload/'):
        return f'{method} upload'
    if path.endswith('/o'):
        return f'{method} list'
    if '/o/' in path:
        media = _param(request, 'alt') == 'media' or path.startswith('/download/')
        return f"{method} {'media' if media else 'object'}"
    return f'{method} other'


def _client(request) -> str:
    """The client library's name from the User-Agent header, e.g. 'python-gcsfs'."""
    agent = request.get_header('User-Agent') or 'unknown'
    return agent.split('/', 1)[0].split(' ', 1)[0]


def _counted_and_serial(handle):
    """`Router.handle`, one request at a time (the emulator's storage is not thread-safe, and a
    check-then-write must be atomic for the conditions above), each counted by kind. The answer
    is sent after the lock is let go: a client may leave a read open (array_record's reader
    reads the start of an open-ended range, then asks for another), and sending the rest of it
    under the lock would block every other request."""
    close = emulator.Response.close

    def handle_serially(router, method):
        answers = []
        with _lock:
            request = emulator.Request(router._request_handler, method)
            if request.path != '/_requests':
                _requests['by_kind'][_kind(method, request)] += 1
                _requests['by_client'][_client(request)] += 1
            emulator.Response.close = lambda response: answers.append(response)  # sent below
            try:
                handle(router, method)
            finally:
                emulator.Response.close = close
        for response in answers:
            close(response)

    return handle_serially


def _report_requests(request, response, storage, *args, **kwargs):
    response.json(_requests)


def patch() -> None:
    """Installs the patches above into the emulator's handlers and routes."""
    originals = {name: getattr(objects, name)
                 for name in ('insert', 'upload_partial', 'delete', 'download', 'get', 'ls')}
    objects.insert = _refusing(_conditional(objects.insert, _upload_target, read=False))
    objects.upload_partial = _refusing(
        _conditional(objects.upload_partial, _upload_target, read=False))
    objects.delete = _conditional(objects.delete, _object_target, read=False)
    objects.download = _conditional(
        _with_generation_headers(_with_suffix_ranges(objects.download)), _object_target,
        read=True)
    objects.get = _conditional(objects.get, _object_target, read=True)
    objects.ls = _with_offsets(objects.ls)
    emulator.Router.handle = _counted_and_serial(emulator.Router.handle)
    # The routes table holds the original handlers: point it at the patched ones.
    patched = {fn: getattr(objects, name) for name, fn in originals.items()}
    emulator.HANDLERS = (
        (r'^/_requests$', {'GET': _report_requests}),
        (r'^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
         r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$',
         {'POST': _conditional(_move, _move_target, read=False)}),
        *((regex, {method: patched.get(fn, fn) for method, fn in methods.items()})
          for regex, methods in emulator.HANDLERS),
    )


class _Handler(emulator.RequestHandler):
    # HTTP/1.1 answers `Expect: 100-continue` (curl, thus tensorstore, waits a second for it before
    # sending any upload over 1 kB); one request a connection keeps the emulator's framing simple.
    protocol_version = 'HTTP/1.1'

    def end_headers(self):
        self.send_header('Connection', 'close')
        super().end_headers()


class _Server(server.ThreadingHTTPServer):
    # Tensorstore opens dozens of connections at once; the default backlog of 5 drops some and
    # the client retries them a second later.
    request_queue_size = 128


def _exit_with_parent() -> None:
    """Ends this process once its parent is gone (a test run killed before it could stop us)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def serve(port: int, data_dir: str | None) -> None:
    """Serves the patched emulator on 127.0.0.1:`port` until the process or its parent ends."""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    patch()
    storage = Storage(use_memory_fs=data_dir is None, data_dir=data_dir)
    _Server(('127.0.0.1', port), partial(_Handler, storage)).serve_forever()


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--data-dir', help='keeps the objects here (default: in memory)')
    args = parser.parse_args()
    serve(args.port, args.data_dir)
