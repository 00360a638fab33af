"""`vit_jax.main` on the tests' tiny ViT (`--config=tests/scale_worker.py`, synthetic data) with a
disk that fills up during the checkpoint of step `FULL_AT`, for tests/test_workdir.py:

    python tests/full_disk_worker.py FULL_AT --workdir=DIR --config.KEY=VALUE ...

Each array write of that checkpoint fails as tensorstore's writes do on a full disk: one raises
`OSError(ENOSPC)` while another is still in flight. The in-flight writes complete once the run
has stopped, after orbax closed the save's event loop, as late writes of a real failed save do.
"""

import asyncio
import errno
import functools
import os
import sys

import scale_worker
import tensorstore as ts
from orbax.checkpoint._src.serialization import serialization

from vit_jax import main
from vit_jax.data.arrays import array_datasets
from vit_jax.train import loop

write = serialization.async_serialize_from_host
in_flight = []


async def full_disk(rslices, spec, full_at, **kwargs):
    directory = spec['kvstore']['base']['path']
    if f'/checkpoints/{full_at}.orbax-checkpoint-tmp' not in directory:
        return await write(rslices, spec, **kwargs)
    promise, late = ts.Promise.new()
    in_flight.append(promise)

    async def enospc():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)

    await asyncio.gather(enospc(), late)


if __name__ == '__main__':
    serialization.async_serialize_from_host = functools.partial(full_disk,
                                                                full_at=int(sys.argv[1]))
    loop.train = functools.partial(loop.train, datasets=array_datasets(
        *scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES))
    code = main.main([f'--config={scale_worker.__file__}', *sys.argv[2:]])
    for promise in in_flight:  # the writes left in flight complete
        promise.set_result(None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
