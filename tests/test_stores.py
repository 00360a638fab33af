"""The local object stores (tests/stores.py) behave as GCS and S3 do for the real clients:
tensorstore, orbax, etils.epath (gcsfs, s3fs), google-cloud-storage and tensorboardX."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest


def _kvstore(bucket: str, **spec):
    """Tensorstore's key-value store on the whole bucket `gs://name` or `s3://name`."""
    import tensorstore as ts

    driver, name = bucket.split('://')
    return ts.KvStore.open({'driver': 'gcs' if driver == 'gs' else driver, 'bucket': name,
                            **spec}).result()


def _compare_and_swap(kv) -> None:
    """Create-only writes and compare-and-swap through tensorstore's `if_equal`, as GCS and S3
    answer them; a failed condition returns the empty (unknown) generation."""
    absent = kv.read('lock').result().stamp.generation
    first = kv.write('lock', b'a', if_equal=absent).result().generation
    assert first
    assert kv.write('lock', b'b', if_equal=absent).result().generation == b''
    read = kv.read('lock').result()
    assert (read.value, read.stamp.generation) == (b'a', first)
    second = kv.write('lock', b'c', if_equal=first).result().generation
    assert second not in (b'', first)
    assert kv.write('lock', b'd', if_equal=first).result().generation == b''
    assert kv.read('lock').result().value == b'c'


def _range_delete(kv) -> None:
    """`delete_range` deletes the keys in its range and nothing else."""
    import tensorstore as ts

    for key in ('a/1', 'a/2', 'b/1', 'c'):
        kv.write(key, b'1').result()
    kv.delete_range(ts.KvStore.KeyRange('a/', 'a0')).result()
    assert sorted(kv.list().result()) == [b'b/1', b'c']


def test_tensorstore_gcs_compare_and_swap(gcs_env):
    _compare_and_swap(_kvstore(gcs_env.bucket()))


def test_tensorstore_gcs_range_delete(gcs_env):
    _range_delete(_kvstore(gcs_env.bucket()))


def test_tensorstore_s3(s3_env):
    """Tensorstore reaches moto only through the spec's `endpoint`: it reads no endpoint from the
    environment (without one it asks AWS where the bucket lives)."""
    _compare_and_swap(_kvstore(s3_env.bucket(), endpoint=s3_env.url))
    _range_delete(_kvstore(s3_env.bucket(), endpoint=s3_env.url))


@pytest.mark.parametrize('chunk_size', [None, 256 * 1024], ids=['multipart', 'resumable'])
def test_upload_preconditions(gcs_env, chunk_size):
    """`ifGenerationMatch` on uploads (0: only if absent) and deletes: 412 when it fails."""
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    bucket = storage.Client().bucket(gcs_env.bucket().removeprefix('gs://'))
    data = os.urandom(600 * 1024)  # Three chunks when resumable.

    def upload(generation: int) -> int:
        blob = bucket.blob('lock', chunk_size=chunk_size)
        blob.upload_from_string(data, if_generation_match=generation)
        return blob.generation

    first = upload(0)
    with pytest.raises(PreconditionFailed):
        upload(0)
    second = upload(first)
    assert second > first
    with pytest.raises(PreconditionFailed):
        upload(first)
    with pytest.raises(PreconditionFailed):
        bucket.blob('lock').delete(if_generation_match=first)
    assert bucket.blob('lock').download_as_bytes() == data
    bucket.blob('lock').delete(if_generation_match=second)
    assert not bucket.blob('lock').exists()


def test_media_upload_precondition_status(gcs_env):
    """A media upload (tensorstore's kind) that must create answers 412 when the object exists."""
    bucket = gcs_env.bucket().removeprefix('gs://')
    url = f'{gcs_env.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name=x'
    url += '&ifGenerationMatch=0'
    urllib.request.urlopen(urllib.request.Request(url, data=b'1', method='POST')).close()
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(urllib.request.Request(url, data=b'2', method='POST'))
    assert failed.value.code == 412


def _tree() -> dict:
    return {'params': {'kernel': np.arange(12, dtype=np.float32).reshape(3, 4),
                       'bias': np.ones(4, np.float32)},
            'step': np.asarray(7, np.int32)}


def test_orbax_gcs(gcs_env):
    """Orbax saves and restores in gs://, and `max_to_keep` deletes only the old step."""
    import orbax.checkpoint as ocp
    from etils import epath

    bucket = epath.Path(gcs_env.bucket())
    (bucket / 'run' / 'config.json').write_text('{}')
    directory = bucket / 'run' / 'checkpoints'
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    tree = _tree()
    before = sum(gcs_env.requests()['by_kind'].values())
    manager.save(0, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    assert sum(gcs_env.requests()['by_kind'].values()) > before
    restored = manager.restore(0, args=ocp.args.StandardRestore(tree))
    np.testing.assert_array_equal(restored['params']['kernel'], tree['params']['kernel'])
    assert restored['step'] == 7

    manager.save(1, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    manager.close()
    assert manager.all_steps() == [1]
    assert sorted(p.name for p in directory.iterdir()) == ['1']
    assert (bucket / 'run' / 'config.json').read_text() == '{}'
    again = ocp.CheckpointManager(directory).restore(1, args=ocp.args.StandardRestore(tree))
    np.testing.assert_array_equal(again['params']['bias'], tree['params']['bias'])


def test_orbax_s3(s3_env):
    """With `vit_jax.train.orbax_paths` (what `vit_jax.train.checkpoint` installs), orbax saves
    and restores in s3://: the arrays through tensorstore's s3 driver, a save marked complete by
    `commit_success.txt` (S3 cannot rename a folder), `max_to_keep` deleting the old step."""
    import orbax.checkpoint as ocp
    from etils import epath

    from vit_jax.train import orbax_paths

    orbax_paths.install()
    bucket = epath.Path(s3_env.bucket())
    directory = bucket / 'run' / 'checkpoints'
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    tree = _tree()
    for step in (0, 1):
        manager.save(step, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()
    manager.close()
    assert sorted(p.name for p in directory.iterdir()) == ['1']
    assert 'commit_success.txt' in {p.name for p in (directory / '1').iterdir()}
    again = ocp.CheckpointManager(directory).restore(1, args=ocp.args.StandardRestore(tree))
    np.testing.assert_array_equal(again['params']['kernel'], tree['params']['kernel'])
    assert again['step'] == 7


@pytest.mark.parametrize('store', ['gcs_env', 's3_env'])
def test_epath(store, request):
    """The file operations the trainer does on a workdir, through etils.epath and fsspec."""
    from etils import epath

    root = epath.Path(request.getfixturevalue(store).bucket()) / 'workdir'
    root.mkdir(parents=True, exist_ok=True)
    (root / 'a.txt').write_text('alpha')
    (root / 'sub').mkdir()
    (root / 'sub' / 'b.bin').write_bytes(b'\0beta')
    assert (root / 'a.txt').read_text() == 'alpha'
    assert (root / 'sub' / 'b.bin').read_bytes() == b'\0beta'
    assert (root / 'a.txt').exists() and not (root / 'nothing').exists()
    assert sorted(p.name for p in root.glob('*.txt')) == ['a.txt']
    assert sorted(p.name for p in root.iterdir()) == ['a.txt', 'sub']
    (root / 'a.txt').rename(root / 'c.txt')
    assert not (root / 'a.txt').exists() and (root / 'c.txt').read_text() == 'alpha'
    (root / 'c.txt').unlink()
    assert not (root / 'c.txt').exists()
    (root / 'sub').rmtree()
    assert not (root / 'sub' / 'b.bin').exists()


def test_tensorboardx_gcs(gcs_env):
    """tensorboardX writes gs:// event files through google-cloud-storage, which honours
    STORAGE_EMULATOR_HOST. Each flush uploads the whole file again, and so does an `atexit` hook
    at the end of the process: in a subprocess, so that it runs while the emulator does."""
    from etils import epath

    logdir = f'{gcs_env.bucket()}/tensorboard'
    script = ('import sys, tensorboardX\n'
              'writer = tensorboardX.SummaryWriter(sys.argv[1])\n'
              'for step in range(3):\n'
              '    writer.add_scalar("loss", 1 / (step + 1), step)\n'
              '    writer.flush()\n'
              'writer.close()\n')
    subprocess.run([sys.executable, '-c', script, logdir], check=True, timeout=120)
    [events] = epath.Path(logdir).iterdir()
    assert events.name.startswith('events.out.tfevents.') and events.stat().length > 100


@pytest.mark.slow
def test_tfds_gcs(gcs_env, digits_data_dir):
    """A tfds dataset in gs://: its metadata read through etils.epath (EPATH_USE_TF=false), its
    ArrayRecord files through array_record's own GCS client (CLOUD_STORAGE_EMULATOR_ENDPOINT)."""
    import fsspec
    import tensorflow_datasets as tfds

    from vit_jax.data import digits

    local = digits.prepare(digits_data_dir)
    remote = f'{gcs_env.bucket()}/tfds/{digits.NAME}/{digits.VERSION}'
    fsspec.filesystem('gs').put(local.data_dir, remote, recursive=True)
    builder = tfds.builder_from_directory(remote)
    assert builder.info.splits['test'].num_examples == digits.NUM_TEST
    test = builder.as_data_source('test')
    assert len(test) == digits.NUM_TEST
    assert test[0]['label'] == local.as_data_source('test')[0]['label']


def test_gcs_restart_keeps_objects(gcs_env):
    """`stop()` cuts the network (connections refused), `start()` brings back the same objects
    and generations."""
    kv = _kvstore(gcs_env.bucket())
    written = kv.write('state', b'saved').result().generation
    gcs_env.stop()
    try:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(gcs_env.url + '/_requests', timeout=5)
    finally:
        gcs_env.start()
    read = kv.read('state').result()
    assert (read.value, read.stamp.generation) == (b'saved', written)
    assert kv.write('state', b'next', if_equal=written).result().generation not in (b'', written)


def test_http_files(http_files):
    url, directory = http_files
    data = os.urandom(100_000)
    (directory / 'weights.npz').write_bytes(data)
    with urllib.request.urlopen(f'{url}/weights.npz', timeout=5) as response:
        assert response.read() == data
