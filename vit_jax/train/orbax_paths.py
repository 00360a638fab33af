"""What orbax 0.12.8 must be told to checkpoint into `s3://`.

orbax knows two kinds of directory: `gs://` and the local file system. An `s3://` directory
fails three ways: its tensorstore spec is built with `os.path.normpath`, which turns the URL into
`s3:/bucket/...` and then refuses it as not absolute; its arrays would go to tensorstore's `file`
driver; and a finished save is marked by renaming a temporary folder, which S3 cannot do (s3fs
copies object by object, and fails on a folder written by tensorstore). `install()` wraps the
five orbax functions that decide this, for `s3://` directories only: their tensorstore spec is
`storage.kvstore_spec` (the `s3` driver, with `AWS_ENDPOINT_URL`), and a save is marked complete
the way orbax marks it on GCS, by a `commit_success.txt` written last into the step's folder.
Everything else orbax does with an `s3://` directory goes through etils.epath (s3fs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from orbax.checkpoint._src.path import atomicity, atomicity_defaults, gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from vit_jax import storage


def _is_s3(path: Any) -> bool:
    return os.fspath(path).startswith('s3://')


def _for_s3(original: Callable[..., Any], s3_version: Callable[..., Any]) -> Callable[..., Any]:
    """`original`, but `s3_version` when the first argument is an `s3://` path."""

    @functools.wraps(original)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        return (s3_version if _is_s3(path) else original)(path, *args, **kwargs)

    wrapper.vit_jax_s3 = True  # type: ignore[attr-defined]
    return wrapper


def _keep_url(path: str) -> str:
    """`s3://bucket/a/b/` as `s3://bucket/a/b` (what `_normalize_path` does to local paths)."""
    return 's3://' + os.path.normpath(path.removeprefix('s3://'))


def _commit_file(path: Any, **unused: Any) -> type[atomicity.CommitFileTemporaryPath]:
    return atomicity.CommitFileTemporaryPath


def install() -> None:
    """Teaches orbax the `s3://` scheme (idempotent; other paths are handled as before)."""
    if getattr(tensorstore_utils._normalize_path, 'vit_jax_s3', False):
        return
    tensorstore_utils._normalize_path = _for_s3(tensorstore_utils._normalize_path, _keep_url)
    # orbax then builds an object store's spec through `get_kvstore_for_gcs`.
    tensorstore_utils._use_gcs_driver = _for_s3(tensorstore_utils._use_gcs_driver,
                                                lambda path: True)
    gcs_utils.get_kvstore_for_gcs = _for_s3(gcs_utils.get_kvstore_for_gcs, storage.kvstore_spec)
    for name in ('get_default_temporary_path_class', 'get_item_default_temporary_path_class'):
        setattr(atomicity_defaults, name, _for_s3(getattr(atomicity_defaults, name), _commit_file))
