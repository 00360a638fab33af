"""`tree_bytes(directory)`: every file below a folder by its sha256 (nothing changed?)."""

import hashlib
import os


def tree_bytes(directory) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out
