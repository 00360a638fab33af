"""What a vit_jax process does first: import JAX and register its plugins, with the notes JAX's
CUDA plugin writes to stderr on a machine without a GPU left out.

The plugin (`pip install 'vit_jax[gpu]'`; the `test` extra has it to compile for GPUs without
one) prints "Could not find cuda drivers on your machine" from C++ each time one of its
libraries loads, which happens as `jax` is imported and as its plugins are registered, even
with `JAX_PLATFORMS=cpu`. Every command line would start with those lines. Anything else
written to stderr meanwhile is passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# The lines left out: the CUDA stub's note and the header absl writes before its first message.
CUDA_NOTES = re.compile(r'cudart_stub\.cc:\d+\] Could not find cuda drivers|'
                        r'All log messages before absl::InitializeLog\(\) is called')


def import_jax() -> None:
    """Imports `jax` and registers its plugins (creating no backend, so that
    `jax.distributed.initialize` may still follow), without the CUDA plugin's notes on
    stderr. Does nothing when `jax` is imported already."""
    if 'jax' in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            from jax._src import xla_bridge

            xla_bridge._discover_and_register_pjrt_plugins()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors='replace').splitlines(keepends=True)
            sys.stderr.write(''.join(line for line in lines if not CUDA_NOTES.search(line)))


import_jax()
