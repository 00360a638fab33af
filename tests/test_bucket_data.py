"""Datasets in a bucket (the GCS emulator, tests/stores.py): tfds datasets and image folders are
read where they are, by index; what the pipeline writes goes to the local cache
(`VIT_JAX_CACHE`), never into the bucket."""

import json
import os
import urllib.request

import fsspec
import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data import make_config, write_image

from vit_jax.data import create_datasets, digits
from vit_jax.errors import DataError, StorageError

LATE = 1437 * 100_000 + 5  # a resume position 100,000 epochs in


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty local cache (`VIT_JAX_CACHE`) for this test."""
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def store_digits(data_dir: str, name: str, file_format: str, px: int = 8) -> str:
    """The digits as the tfds dataset `name` 1.0.0 in `data_dir`; returns its folder. With
    `px` > 8 they are scaled up and noise added (images that do not compress: `px=16` makes a
    train file over 1 MiB)."""
    images, labels = digits.images_and_labels()
    if px > 8:
        images = np.repeat(np.repeat(images, px // 8, 1), px // 8, 2)
        images = images ^ np.random.default_rng(0).integers(0, 32, images.shape, np.uint8)
    path = os.path.join(data_dir, name, '1.0.0')
    digits.store_atomically(
        data_dir, path, name=name, version='1.0.0', file_format=file_format,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=images.shape[1:]),
            'label': tfds.features.ClassLabel(num_classes=10)}),
        split_datasets={split: [(int(i), {'image': images[i], 'label': labels[i]})
                                for i in indices]
                        for split, indices in zip(('train', 'test'),
                                                  digits.split_indices(labels), strict=True)})
    return path


def upload(local: str, url: str) -> None:
    fsspec.filesystem(url.split('://')[0]).put(local, url, recursive=True)


def objects(gcs, bucket: str) -> dict[str, str]:
    """`{name: generation}` of every object in `bucket`, listed by the emulator itself."""
    url = f'{gcs.url}/storage/v1/b/{bucket.removeprefix("gs://")}/o'
    with urllib.request.urlopen(url, timeout=10) as response:
        return {o['name']: o['generation'] for o in json.load(response).get('items', [])}


def stream(config, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(two train batches from start, their labels, all eval images)` of `config`."""
    train, make_eval_iterator, _ = create_datasets(config, start)
    batches = [next(train) for _ in range(2)]
    return (np.concatenate([b['image'] for b in batches]),
            np.concatenate([b['label'] for b in batches]),
            np.concatenate([b['image'] for b in make_eval_iterator()]))


def assert_same(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_tfds_dataset_in_a_bucket_is_read_there_by_index(gcs_env, tmp_path, cache):
    local = str(tmp_path / 'tfds')
    path = store_digits(local, 'bucket_digits', 'array_record', px=16)
    train_file = os.path.join(path, 'bucket_digits-train.array_record-00000-of-00001')
    assert os.path.getsize(train_file) > 2 ** 20  # its footer is read with a suffix range
    bucket = gcs_env.bucket()
    upload(local, f'{bucket}/tfds')
    before = objects(gcs_env, bucket)
    config = make_config('bucket_digits', local)
    config.pp.update(augment='inception', flip=True, crop=12, test='test[:50]')
    want = [stream(config), stream(config, LATE)]
    config.tfds_data_dir = f'{bucket}/tfds'
    for start, expected in zip((0, LATE), want, strict=True):  # epoch 0, then a late resume
        assert_same(stream(config, start), expected)
    assert objects(gcs_env, bucket) == before and not cache.exists()


def test_a_tfds_dataset_in_s3_is_read_from_a_local_copy(s3_env, tmp_path, cache):
    # array_record's reader opens local files and gs:// only: the files of the splits read and
    # the metadata are copied to the cache once.
    local = str(tmp_path / 'tfds')
    store_digits(local, 'bucket_digits', 'array_record')
    bucket = s3_env.bucket()
    upload(local, f'{bucket}/tfds')
    config = make_config('bucket_digits', local)
    config.pp.update(augment='inception', flip=True, test='test[:50]')
    want = stream(config, LATE)
    config.tfds_data_dir = f'{bucket}/tfds'
    for _ in range(2):  # copies, then reads the copy
        assert_same(stream(config, LATE), want)
    copies = cache / 'array_record' / 's3' / bucket.removeprefix('s3://') / 'tfds' / \
        'bucket_digits' / '1.0.0'
    assert sorted(os.listdir(copies)) == sorted(os.listdir(os.path.join(local, 'bucket_digits',
                                                                        '1.0.0')))


def test_digits_with_a_bucket_data_dir_is_built_in_the_local_cache(gcs_env, digits_data_dir,
                                                                   cache):
    bucket = gcs_env.bucket()
    upload(str(digits.prepare(digits_data_dir).data_dir), f'{bucket}/other/1.0.0')
    before = objects(gcs_env, bucket)
    config = make_config(data_dir=digits_data_dir)
    want = stream(config)
    config.tfds_data_dir = f'{bucket}/tfds'
    assert_same(stream(config), want)
    assert objects(gcs_env, bucket) == before  # nothing written there
    assert os.listdir(cache / 'tensorflow_datasets' / 'digits') == [digits.VERSION]

    # Prepared in the bucket, it is read from there: nothing more in the cache.
    upload(str(digits.prepare(digits_data_dir).data_dir), f'{bucket}/tfds/digits/1.1.0')
    before = objects(gcs_env, bucket)
    (cache / 'tensorflow_datasets' / 'digits' / digits.VERSION / 'dataset_info.json').unlink()
    assert_same(stream(config), want)
    assert objects(gcs_env, bucket) == before
    assert not (cache / 'tensorflow_datasets' / 'digits' / digits.VERSION /
                'dataset_info.json').exists()


def test_a_tfrecord_dataset_in_a_bucket_is_copied_to_the_local_cache(gcs_env, tmp_path, cache):
    array_record, tfrecord = str(tmp_path / 'array_record'), str(tmp_path / 'tfrecord')
    store_digits(array_record, 'bucket_digits', 'array_record')
    store_digits(tfrecord, 'bucket_digits', 'tfrecord')
    bucket = gcs_env.bucket()
    upload(tfrecord, f'{bucket}/tfds')
    before = objects(gcs_env, bucket)
    config = make_config('bucket_digits', array_record)
    config.pp.update(augment='inception', flip=True, test='test[:50]')
    want = stream(config, LATE)
    config.tfds_data_dir = f'{bucket}/tfds'
    for _ in range(2):  # copies, then reads the copy
        assert_same(stream(config, LATE), want)
    assert objects(gcs_env, bucket) == before
    copies = cache / 'array_record' / 'gs' / bucket.removeprefix('gs://') / 'tfds' / \
        'bucket_digits' / '1.0.0'
    assert sorted(os.listdir(copies)) == ['test_50_.array_record', 'train.array_record']


def test_a_damaged_tfrecord_file_is_one_line(gcs_env, tmp_path, cache):
    path = store_digits(str(tmp_path / 'tfds'), 'bucket_digits', 'tfrecord')
    shard = os.path.join(path, 'bucket_digits-test.tfrecord-00000-of-00001')
    data = bytearray(open(shard, 'rb').read())
    data[1000] ^= 1
    open(shard, 'wb').write(bytes(data))
    bucket = gcs_env.bucket()
    upload(str(tmp_path / 'tfds'), f'{bucket}/tfds')
    with pytest.raises(DataError, match=rf'^{bucket}/tfds/bucket_digits/1.0.0/bucket_digits-test'
                                        r'.tfrecord-00000-of-00001: a damaged or cut-short '
                                        r'TFRecord file .*; prepare that dataset again.$'):
        create_datasets(make_config('bucket_digits', f'{bucket}/tfds'))
    written = [name for _, _, names in os.walk(cache) for name in names]
    assert written == ['train.array_record']  # no copy of the damaged split, no partial file


def image_folder(root) -> None:
    for name, shape in [('a.png', (10, 12, 3)), ('b.JPG', (6, 6, 3)), ('c.jpeg', (9, 5, 3))]:
        write_image(root / 'train' / 'cat' / name, 250, shape)
    for name, shape in [('d.png', (7, 7, 1)), ('sub/e.Png', (12, 10, 3))]:
        write_image(root / 'train' / 'dog' / name, 5, shape)
    write_image(root / 'test' / 'cat' / 'f.jpg', 250, (8, 8, 3))
    write_image(root / 'test' / 'dog' / 'g.png', 5, (8, 8, 1))


@pytest.mark.parametrize('store', ['gcs_env', 's3_env'])
def test_an_image_folder_in_a_bucket_reads_the_same_pixels(store, tmp_path, request):
    image_folder(tmp_path / 'images')
    (tmp_path / 'images' / 'train' / 'dog' / 'cut.jpg').write_bytes(
        (tmp_path / 'images' / 'train' / 'cat' / 'b.JPG').read_bytes()[:-20])
    bucket = request.getfixturevalue(store).bucket()
    upload(str(tmp_path / 'images'), f'{bucket}/images')
    config = make_config(str(tmp_path / 'images'))
    config.pp.update(augment='inception', flip=True, crop=6)
    config.update(batch=4, batch_eval=2, skip_bad_images=True)
    want, info = stream(config, 7), create_datasets(config)[2]
    config.dataset = f'{bucket}/images'
    got, remote = stream(config, 7), create_datasets(config)[2]
    assert_same(got, want)
    assert (remote.num_train, remote.num_eval, remote.class_names) == (5, 2, ('cat', 'dog'))
    assert remote.skipped == (f'{bucket}/images/train/dog/cut.jpg: truncated JPEG (no end '
                              'marker)',) and info.skipped[0].endswith('cut.jpg: truncated JPEG '
                                                                       '(no end marker)')


@pytest.mark.parametrize('dataset, data_dir, message', [
    ('bucket_digits', 'gs://no-such-bucket-vit/tfds',
     r'^gs://no-such-bucket-vit/tfds \(--config.tfds_data_dir\): no such bucket; create the '
     r'bucket or fix --config.tfds_data_dir.$'),
    ('gs://no-such-bucket-vit/images', None,
     r'^gs://no-such-bucket-vit/images \(--config.dataset\): no such bucket; '),
    ('{bucket}/images', None, r"^No such folder '{bucket}/images'; check the path of "
                              r'--config.dataset.$'),
    ('mnist', '{bucket}/tfds', r"^Dataset 'mnist' is not prepared in {bucket}/tfds and vit_jax "
                               r'never downloads: .*tfds build mnist'),
    ('bucket_digits', '{bucket}/tfds', r"^Unknown dataset 'bucket_digits': not a tfds name.*, not "
                                       r'prepared in {bucket}/tfds, '),
])
def test_bad_bucket_input_is_one_line(gcs_env, cache, dataset, data_dir, message):
    bucket = gcs_env.bucket()
    before = objects(gcs_env, bucket)
    config = make_config(dataset.format(bucket=bucket), data_dir and data_dir.format(
        bucket=bucket))
    with pytest.raises(DataError, match=message.format(bucket=bucket)) as error:
        create_datasets(config)
    assert '\n' not in str(error.value)
    assert objects(gcs_env, bucket) == before and not cache.exists()


def test_a_cache_in_a_bucket_is_one_line(monkeypatch):
    monkeypatch.setenv('VIT_JAX_CACHE', 'gs://b/cache')
    with pytest.raises(StorageError, match=r'^VIT_JAX_CACHE=gs://b/cache: the cache must be a '
                                           r'local folder; set VIT_JAX_CACHE to a folder on '
                                           r'this machine.$'):
        create_datasets(make_config())


@pytest.mark.slow
def test_a_store_out_of_reach_is_one_line(gcs_env):
    bucket = gcs_env.bucket()
    gcs_env.stop()
    try:
        with pytest.raises(StorageError, match=rf'^cannot read {bucket}/tfds: the store is '
                                               r'unreachable \(.*\); check the network'):
            create_datasets(make_config('bucket_digits', f'{bucket}/tfds'))
    finally:
        gcs_env.start()
