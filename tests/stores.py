"""Local object stores for the tests, all on 127.0.0.1: a GCS emulator (tests/gcs_emulator.py, in
a subprocess that a test can stop and restart), moto's S3 server and an HTTP file server."""

import functools
import http.server
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

_EMULATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gcs_emulator.py')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def unique_name(prefix: str) -> str:
    """A bucket name no other test uses: lower case, 3-63 characters."""
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class Gcs:
    """tests/gcs_emulator.py serving `data_dir` on a fixed free port; `stop()` and `start()`
    simulate the network going away and coming back, the objects stay."""

    def __init__(self, data_dir: pathlib.Path, log: pathlib.Path):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self._data_dir, self._log = data_dir, log
        self._process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a user sets to point vit_jax at this emulator."""
        return {'STORAGE_EMULATOR_HOST': self.url}

    @property
    def client_env(self) -> dict[str, str]:
        """`env` plus what each client library needs to reach the emulator, without looking for
        Google credentials or probing for gRPC (see tests/test_stores.py)."""
        return {
            **self.env,
            'TENSORSTORE_GCS_HTTP_URL': self.url,  # tensorstore (orbax's arrays)
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # tensorstore: no credentials lookup
            'CLOUD_STORAGE_EMULATOR_ENDPOINT': self.url,  # array_record's C++ GCS client
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # gcsfs: no gRPC probe of each bucket
            'EPATH_USE_TF': 'false',  # etils.epath through gcsfs, not tf.io.gfile
        }

    def start(self) -> None:
        """Starts the emulator (a no-op while it runs); returns once it answers."""
        if self._process is not None and self._process.poll() is None:
            return
        with open(self._log, 'ab') as log:
            self._process = subprocess.Popen(
                [sys.executable, _EMULATOR, '--port', str(self.port),
                 '--data-dir', str(self._data_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(self.url + '/_requests', timeout=1)
                return
            except OSError as error:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f'GCS emulator not started; see {self._log}') from error
                time.sleep(0.05)

    def stop(self) -> None:
        """Kills the emulator: every request fails until `start()`."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def bucket(self, prefix: str = 'gcs') -> str:
        """A new empty bucket: `gs://name`; `prefix` `anonymous`, `denied` or `quota` makes one
        that refuses writes as GCS does without credentials, without permission or over a
        quota (tests/gcs_emulator.py)."""
        name = unique_name(prefix)
        request = urllib.request.Request(
            f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(),
            headers={'Content-Type': 'application/json'}, method='POST')
        urllib.request.urlopen(request, timeout=5).close()
        return f'gs://{name}'

    def requests(self) -> dict[str, dict[str, int]]:
        """Requests served since the emulator last started, by kind and by client:
        `{'by_kind': {'POST upload': 3, ...}, 'by_client': {'tensorstore': 2, ...}}`."""
        return json.loads(_get(self.url + '/_requests'))


class S3:
    """moto's S3 server in a thread of this process, on a free port."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger('werkzeug').setLevel(logging.WARNING)  # No line per request on stderr.
        self._server = ThreadedMotoServer(ip_address='127.0.0.1', port=free_port(),
                                          verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f'http://{host}:{port}'

    @property
    def env(self) -> dict[str, str]:
        """What a user sets to point vit_jax at this server: the endpoint, dummy credentials and
        a region, all botocore (boto3, s3fs) needs. Tensorstore takes only the credentials: its
        endpoint comes from the kvstore spec."""
        return {
            'AWS_ENDPOINT_URL': self.url,
            'AWS_ACCESS_KEY_ID': 'testing',
            'AWS_SECRET_ACCESS_KEY': 'testing',
            'AWS_REGION': 'us-east-1',
            'AWS_DEFAULT_REGION': 'us-east-1',
        }

    @property
    def client_env(self) -> dict[str, str]:
        """`env`, and etils.epath through s3fs rather than tf.io.gfile."""
        return {**self.env, 'EPATH_USE_TF': 'false'}

    def bucket(self) -> str:
        """A new empty bucket: `s3://name`."""
        name = unique_name('s3')
        request = urllib.request.Request(f'{self.url}/{name}', method='PUT')
        urllib.request.urlopen(request, timeout=5).close()
        return f's3://{name}'

    def stop(self) -> None:
        self._server.stop()


class HttpFiles:
    """An HTTP server (one thread a request) serving `directory` at `url`."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass
