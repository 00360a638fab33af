"""Shared test set-up: the repository's paths, its config files and the digits data."""

import os
import pathlib
from collections.abc import Callable, Iterator

import pytest
import stores

# JAX computes on the CPU in every test and every process a test starts; libtpu (the `tpu`
# extra, for `vit_jax.plan`) only compiles for TPU topologies, it never runs.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Read once a process: etils.epath caches at its first gs:// or s3:// path whether to go through
# tf.io.gfile, which ignores the local stores (tests/stores.py); gcsfs decides on import whether to
# probe each bucket over gRPC, which the GCS emulator does not serve.
os.environ.setdefault('EPATH_USE_TF', 'false')
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')

# The repository root, for the few uses at import time (e.g. lists to parametrize over);
# tests take the `repo` fixture.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Reference outputs of the authors' code (tests/fixtures/reference/*.npz).
REFERENCE = os.path.join(REPO, 'tests', 'fixtures', 'reference')


@pytest.fixture(scope='session')
def repo() -> str:
    """The repository root: the working directory of the command-line runs."""
    return REPO


@pytest.fixture(scope='session')
def config_spec() -> Callable[[str], str]:
    """`config_spec("vit.py:b16,cifar10")`: the `--config` spec of that file in vit_jax/configs."""
    return lambda spec: os.path.join(REPO, 'vit_jax', 'configs', spec)


@pytest.fixture(scope='session')
def load_config(config_spec) -> Callable:
    """`load_config('vit.py:b16,cifar10', ('batch', '8'), ...)`: the config file's config with
    the overrides (key, text) applied."""
    from vit_jax import config as config_lib

    def load(spec: str, *overrides: tuple[str, str]):
        return config_lib.apply_overrides(config_lib.load_config(config_spec(spec)), overrides)

    return load


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> str:
    """A tfds data dir shared by the tests that read the embedded `digits` dataset."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def digits_config(load_config, digits_data_dir) -> Callable:
    """`digits_config(('batch', '32'), ...)`: the main job's config (configs/digits.py) reading
    the shared digits data dir, with the overrides applied."""
    return lambda *overrides: load_config('digits.py', ('tfds_data_dir', digits_data_dir),
                                          *overrides)


@pytest.fixture(scope='session')
def trained_digits(digits_config, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """`(workdir, final metrics)` of the main job's recipe cut to 500 steps (about 96 % held
    out), evaluated once, at the end, in batches of 7; trained once for the tests that need a
    trained model."""
    from vit_jax.train.loop import train

    workdir = tmp_path_factory.mktemp('trained_digits')
    config = digits_config(('total_steps', '500'), ('warmup_steps', '50'), ('batch_eval', '7'),
                           ('eval_every', '0'), ('checkpoint_every', '0'))
    return workdir, train(config, str(workdir))


@pytest.fixture(scope='session')
def timm():
    """timm, importable beside the CPU build of torch (see tests/torch_reference.py)."""
    import torch_reference

    return torch_reference.import_timm()


@pytest.fixture(scope='session')
def transformers():
    """Hugging Face transformers, importable beside the CPU build of torch."""
    import torch_reference

    return torch_reference.import_transformers()


@pytest.fixture(scope='session')
def gcs(tmp_path_factory) -> Iterator[stores.Gcs]:
    """The GCS emulator for the session (see tests/stores.py): `gcs.bucket()` makes a bucket,
    `gcs.env` points a subprocess at it, `gcs.stop()` / `gcs.start()` cut and restore the network
    (the objects stay), `gcs.requests()` counts the requests served."""
    root = tmp_path_factory.mktemp('gcs')
    emulator = stores.Gcs(root / 'data', root / 'emulator.log')
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_env(gcs, monkeypatch) -> stores.Gcs:
    """`gcs`, running, with `gcs.client_env` in `os.environ` for this test."""
    gcs.start()  # An earlier test may have stopped it.
    for key, value in gcs.client_env.items():
        monkeypatch.setenv(key, value)
    return gcs


@pytest.fixture(scope='session')
def s3() -> Iterator[stores.S3]:
    """moto's S3 server for the session: `s3.bucket()` makes a bucket, `s3.env` points boto3,
    s3fs and a subprocess at it."""
    server = stores.S3()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch) -> stores.S3:
    """`s3` with `s3.client_env` in `os.environ` for this test."""
    for key, value in s3.client_env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope='session')
def http_files(tmp_path_factory) -> Iterator[tuple[str, pathlib.Path]]:
    """`(url, directory)`: an HTTP server for the session serving the files put in `directory`."""
    server = stores.HttpFiles(tmp_path_factory.mktemp('http_files'))
    yield server.url, server.directory
    server.stop()
