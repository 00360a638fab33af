"""A launch holding a `LeaseLock` in its own process, for tests/test_lease.py:

    python tests/lease_worker.py PATH LEASE_SECONDS NAME

reads commands from stdin, one a line, and answers each in one line on stdout: `acquire`
(`held`, or `refused: MESSAGE`), `check` (`ok`, or `lost: MESSAGE`), `release` (`released`),
`record` (the JSON record it writes, `launch` included). The holder names itself `NAME` as its
host, so that a test tells the launches apart.
"""

import json
import os
import sys
import types

# The lock's modules from this checkout, without the package's own import of the models (JAX,
# flax): eight workers start in a second instead of half a minute.
package = types.ModuleType('vit_jax')
package.__path__ = [os.path.join(os.path.dirname(os.path.dirname(__file__)), 'vit_jax')]
sys.modules['vit_jax'] = package

from vit_jax import storage  # noqa: E402
from vit_jax.errors import WorkdirError  # noqa: E402
from vit_jax.train.lease import LeaseLock  # noqa: E402


def main(path: str, lease_seconds: str, name: str) -> None:
    lock = LeaseLock(storage.path(path), {'host': name, 'pid': os.getpid(), 'started': 'then'},
                     lease_seconds=float(lease_seconds))
    print('ready', flush=True)
    for command in sys.stdin:
        command = command.strip()
        try:
            if command == 'acquire':
                lock.acquire()
                answer = 'held'
            elif command == 'check':
                lock.check()
                answer = 'ok'
            elif command == 'release':
                lock.release()
                answer = 'released'
            else:
                answer = json.dumps({**lock.holder, 'launch': lock.launch})
        except WorkdirError as e:
            answer = f'{"refused" if command == "acquire" else "lost"}: {e}'
        print(answer, flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:])
