"""Tests of the input pipeline: digits, image folders, tfds (mocked), padding and errors."""

import collections
import functools
import math
import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import DatasetInfo, create_datasets, digits, pad_batch
from vit_jax.errors import DataError


def make_config(dataset: str = 'digits', data_dir: str | None = None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        'dataset': dataset,
        'tfds_data_dir': data_dir,
        'pp': {
            'train': 'train',
            'test': 'test',
            'crop': 8,
            'augment': 'none',
            'area_min': 0.05,
            'pad': 2,
            'flip': False,
            'normalize': 'minus_one_one',
            'randaug_layers': 0,
            'randaug_magnitude': 9,
            'randaug_magnitude_std': 0.5,
            'erase_prob': 0.0,
            'repeated_aug': 1,
            'eval_crop_pct': 1.0,
        },
        'batch': 16,
        'batch_eval': 7,
        'shuffle_buffer': 64,
        'input_threads': 0,
        'seed': 0,
    })


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    digits.prepare(data_dir)
    return data_dir


def split_labels() -> tuple[np.ndarray, np.ndarray]:
    _, labels = digits.images_and_labels()
    train, test = digits.split_indices(labels)
    return labels[train], labels[test]


def test_import_does_not_load_tensorflow(repo):
    code = 'import sys, vit_jax.data; print("tensorflow" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


def test_pad_batch():
    batch = {'image': np.ones((2, 3, 3, 3), np.float32), 'label': np.array([4, 5], np.int32)}
    padded = pad_batch(batch, 4)
    np.testing.assert_array_equal(padded['mask'], [1, 1, 0, 0])
    np.testing.assert_array_equal(padded['label'], [4, 5, 0, 0])
    assert padded['image'].shape == (4, 3, 3, 3) and padded['image'].dtype == np.float32
    assert padded['image'][:2].min() == 1 and padded['image'][2:].max() == 0
    again = pad_batch({'label': padded['label'], 'mask': padded['mask']}, 5)
    np.testing.assert_array_equal(again['mask'], [1, 1, 0, 0, 0])
    empty = pad_batch({'label': np.zeros(0, np.int32)}, 3)
    np.testing.assert_array_equal(empty['mask'], [0, 0, 0])
    with pytest.raises(ValueError, match='length'):
        pad_batch(batch, 1)


def test_digits_split_is_deterministic_and_stratified():
    _, labels = digits.images_and_labels()
    train, test = digits.split_indices(labels)
    assert (len(train), len(test)) == (1437, 360)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    again = digits.split_indices(labels)
    np.testing.assert_array_equal(again[1], test)
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    np.testing.assert_allclose(share, 360 / 1797, atol=1 / 170)  # Off by at most one per class.


def test_digits_is_built_once_and_atomically(digits_dir):
    assert os.listdir(digits_dir) == ['digits']  # No temporary folder left behind.
    info_file = os.path.join(digits_dir, 'digits', digits.VERSION, 'dataset_info.json')
    mtime = os.path.getmtime(info_file)
    assert digits.prepare(digits_dir).info.splits['test'].num_examples == 360
    assert os.path.getmtime(info_file) == mtime


def test_digits_build_lost_race_and_interrupted(tmp_path, monkeypatch):
    def fake_store(*, name, version, data_dir, **kwargs):
        os.makedirs(os.path.join(data_dir, name, version))
        if fail:
            raise KeyboardInterrupt
        with open(os.path.join(data_dir, name, version, 'loser'), 'w'):
            pass

    monkeypatch.setattr(tfds.dataset_builders, 'store_as_tfds_dataset', fake_store)
    path = os.path.join(tmp_path, 'digits', digits.VERSION)
    fail = True
    with pytest.raises(KeyboardInterrupt):
        digits._build(str(tmp_path), path)
    assert os.listdir(tmp_path) == ['digits'] and not os.listdir(tmp_path / 'digits')
    os.makedirs(os.path.join(path, 'winner'))  # Another process finished first.
    fail = False
    digits._build(str(tmp_path), path)
    assert os.listdir(path) == ['winner'] and os.listdir(tmp_path) == ['digits']


def test_digits_eval_counts_every_example_once(digits_dir):
    config = make_config(data_dir=digits_dir)
    _, make_eval_iterator, info = create_datasets(config)
    assert info == DatasetInfo('digits', 10, 1437, 360, tuple('0123456789'))
    batches = list(make_eval_iterator())
    assert len(batches) == math.ceil(360 / 7)
    for batch in batches:
        assert batch['image'].shape == (7, 8, 8, 3) and batch['image'].dtype == np.float32
        assert batch['label'].shape == (7,) and batch['label'].dtype == np.int32
    mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
    labels = np.concatenate([b['label'] for b in batches])[mask]
    images = np.concatenate([b['image'] for b in batches])[mask]
    assert mask.sum() == 360 and mask[:360].all()
    assert collections.Counter(labels) == collections.Counter(split_labels()[1])
    assert images.min() >= -1 and images.max() <= 1

    # The eval images are exactly the sklearn test digits (8x8, no resizing), with their labels.
    sk_images, sk_labels = digits.images_and_labels()
    _, test = digits.split_indices(sk_labels)
    expected = {sk_images[i].tobytes(): sk_labels[i] for i in test}
    pixels = np.round(images * 127.5 + 127.5).astype(np.uint8)
    assert {p.tobytes(): label for p, label in zip(pixels, labels, strict=True)} == expected
    assert list(make_eval_iterator())[0]['label'].tolist() == batches[0]['label'].tolist()


@pytest.mark.parametrize(
    'augment, flip', [('inception', True), ('pad_crop', True), ('none', False)]
)
def test_digits_train_batches(digits_dir, augment, flip):
    config = make_config(data_dir=digits_dir)
    config.pp.update(augment=augment, flip=flip, crop=12)
    train, _, _ = create_datasets(config)
    for _ in range(3):
        batch = next(train)
        assert batch['image'].shape == (16, 12, 12, 3) and batch['image'].dtype == np.float32
        assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
        assert -1 <= batch['image'].min() and batch['image'].max() <= 1
        assert 0 <= batch['label'].min() and batch['label'].max() < 10
    assert len(set(batch['label'])) > 1  # Shuffled, not one class after another.


def test_train_is_reproducible_from_seed(digits_dir):
    config = make_config(data_dir=digits_dir)
    config.pp.update(augment='inception', flip=True)
    first = next(create_datasets(config)[0])
    np.testing.assert_array_equal(next(create_datasets(config)[0])['image'], first['image'])
    config.seed = 1
    assert not np.array_equal(next(create_datasets(config)[0])['image'], first['image'])


def test_tfds_split_slice_sets_num_train(digits_dir):
    config = make_config(data_dir=digits_dir)
    config.pp.train = 'train[:50%]'
    info = create_datasets(config)[2]
    expected = digits.prepare(digits_dir).info.splits['train[:50%]'].num_examples
    assert info.num_train == expected and 700 < expected < 740


def test_each_process_reads_its_share(digits_dir, monkeypatch):
    config = make_config(data_dir=digits_dir)
    config.pp.test = 'test[:101]'  # Shards of 51 and 50: process 1 needs an all-padding batch.
    config.batch_eval = 4

    def masked_examples(batches):
        return [
            (label, image.tobytes())
            for b in batches
            for label, image, mask in zip(b['label'], b['image'], b['mask'], strict=True)
            if mask
        ]

    expected = masked_examples(create_datasets(config)[1]())
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    examples = []
    for index in range(2):
        monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
        train, make_eval_iterator, info = create_datasets(config)
        assert next(train)['image'].shape == (8, 8, 8, 3)
        batches = list(make_eval_iterator())
        assert len(batches) == math.ceil(101 / 4)  # The same count on every process.
        assert all(b['label'].shape == (2,) for b in batches)
        examples += masked_examples(batches)
    assert info.num_eval == len(expected) == 101
    assert sorted(examples) == sorted(expected)


def write_image(path, value: int, shape: tuple[int, int, int]) -> None:
    image = tf.fill(shape, tf.constant(value, tf.uint8))
    encode = tf.io.encode_png if path.suffix.lower() == '.png' else tf.io.encode_jpeg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image).numpy())


@pytest.fixture
def image_folder(tmp_path):
    for name, shape in [('a.png', (10, 12, 3)), ('b.JPG', (6, 6, 3)), ('c.jpeg', (9, 5, 3))]:
        write_image(tmp_path / 'train' / 'cat' / name, 250, shape)
    for name, shape in [('d.png', (7, 7, 1)), ('e.Png', (12, 10, 3))]:
        write_image(tmp_path / 'train' / 'dog' / name, 5, shape)
    (tmp_path / 'train' / 'dog' / 'notes.txt').write_text('not an image')
    write_image(tmp_path / 'test' / 'cat' / 'f.jpg', 250, (8, 8, 3))
    write_image(tmp_path / 'test' / 'dog' / 'g.png', 5, (8, 8, 1))
    write_image(tmp_path / 'test' / 'dog' / 'h.png', 5, (3, 4, 3))
    return tmp_path


def test_folder_dataset(image_folder):
    config = make_config(str(image_folder))
    config.pp.update(train='train[:98%]', augment='inception', flip=True, crop=6)
    config.update(batch=4, batch_eval=2)
    train, make_eval_iterator, info = create_datasets(config)
    assert info == DatasetInfo(str(image_folder), 2, 5, 3, ('cat', 'dog'))
    for _ in range(3):  # More than one epoch.
        batch = next(train)
        assert batch['image'].shape == (4, 6, 6, 3)
        bright = batch['image'].mean(axis=(1, 2, 3)) > 0  # Cats are bright, dogs dark.
        np.testing.assert_array_equal(bright, batch['label'] == 0)
    batches = list(make_eval_iterator())
    assert len(batches) == 2 and [b['mask'].tolist() for b in batches] == [[1, 1], [1, 0]]
    assert np.concatenate([b['label'] for b in batches])[:3].tolist() == [0, 1, 1]


def test_folder_eval_may_have_fewer_classes(image_folder):
    for path in (image_folder / 'test' / 'cat').iterdir():
        path.unlink()
    (image_folder / 'test' / 'cat').rmdir()
    info = create_datasets(make_config(str(image_folder)))[2]
    assert (info.class_names, info.num_eval) == (('cat', 'dog'), 2)


@pytest.mark.parametrize(
    'breakage, message',
    [
        ('missing_split', 'Missing folder'),
        ('no_classes', 'No class folders'),
        ('no_images', 'No images'),
        ('unknown_eval_class', r"lacks: \['fox'\]"),
    ],
)
def test_folder_errors(image_folder, breakage, message):
    config = make_config(str(image_folder))
    if breakage == 'missing_split':
        config.pp.test = 'validation'
    elif breakage == 'no_classes':
        (image_folder / 'empty_split').mkdir()
        config.pp.test = 'empty_split'
    elif breakage == 'no_images':
        (image_folder / 'only_text' / 'cat').mkdir(parents=True)
        (image_folder / 'only_text' / 'cat' / 'readme.txt').write_text('hi')
        config.pp.test = 'only_text'
    else:
        write_image(image_folder / 'test' / 'fox' / 'x.png', 100, (4, 4, 3))
    with pytest.raises(DataError, match=message):
        create_datasets(config)


def test_tfds_dataset_under_mock_data(tmp_path):
    config = make_config('cifar10', str(tmp_path))
    config.pp.update(train='train[:98%]', augment='inception', flip=True, crop=16)
    config.update(batch=8, batch_eval=6)
    with tfds.testing.mock_data(num_examples=20):
        train, make_eval_iterator, info = create_datasets(config)
        batch = next(train)
        batches = list(make_eval_iterator())
    assert (info.name, info.num_classes, info.num_eval) == ('cifar10', 10, 20)
    assert batch['image'].shape == (8, 16, 16, 3) and batch['label'].shape == (8,)
    assert -1 <= batch['image'].min() and batch['image'].max() <= 1
    assert len(batches) == 4 and sum(b['mask'].sum() for b in batches) == 20


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(DataError, match='cifar10.*digits'):
        create_datasets(make_config('cifar11'))


def test_unprepared_tfds_dataset_fails_fast_without_download(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match=f'not prepared in {tmp_path}.*tfds build mnist'):
        create_datasets(make_config('mnist', str(tmp_path)))
    assert time.monotonic() - start < 5
    assert not os.listdir(tmp_path)  # Nothing was downloaded or written.


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('batch', 3, 'config.batch=3 must be a positive multiple'),
        ('batch_eval', 0, 'config.batch_eval=0 must be a positive multiple'),
        ('pp.crop', 0, 'config.pp.crop=0 must be >= 1'),
        ('pp.augment', 'randaug', "Unknown config.pp.augment='randaug'"),
        ('pp.normalize', 'zero_one', "Unknown config.pp.normalize='zero_one'"),
    ],
)
def test_config_errors(monkeypatch, key, value, message):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    config = make_config()
    config.batch_eval = 8
    config.update_from_flattened_dict({key: value})
    with pytest.raises(DataError, match=message):
        create_datasets(config)


def test_inception_crop_decodes_the_same_box_of_a_jpeg_and_a_png():
    """The JPEG path draws the box from the header and decodes only it: the same box as the
    decoded PNG of the same pixels; pixels equal but for one column at the window's edge
    (chroma upsampling there sees no neighbour)."""
    from skimage import data as skdata

    from vit_jax.data import pipeline

    photo = tf.constant(skdata.astronaut()[:301, :437])
    jpeg, png = tf.io.encode_jpeg(photo, quality=90), tf.io.encode_png(photo)
    decoded = tf.io.decode_jpeg(jpeg).numpy()
    for i in range(20):
        seed = tf.constant([0, i], tf.int64)
        window = pipeline._decode_inception_crop(jpeg, seed, 0.05).numpy()
        reference = pipeline._decode_inception_crop(png, seed, 0.05).numpy()
        assert window.shape == reference.shape and window.shape[0] * window.shape[1] < 301 * 437
        # Locate the box in the whole decoded JPEG from the PNG (lossless) crop's size and seed.
        begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
            [301, 437, 3], tf.zeros([0, 0, 4]), seed=seed, area_range=(0.05, 1.0),
            min_object_covered=0, use_image_if_no_bounding_boxes=True)
        np.testing.assert_array_equal(reference, photo.numpy()[begin[0]:begin[0] + box[0],
                                                               begin[1]:begin[1] + box[1]])
        full = decoded[begin[0]:begin[0] + box[0], begin[1]:begin[1] + box[1]]
        columns = np.flatnonzero((window != full).any(axis=(0, 2)))
        assert len(columns) <= 1 and set(columns) <= {0, window.shape[1] - 1}, columns


def test_tfrecord_split_is_copied_once_to_array_record_and_reads_the_same(digits_dir, tmp_path,
                                                                         monkeypatch):
    """A TFRecord tfds dataset gives the same stream as the ArrayRecord one, through a copy
    written on first use and reused after."""
    monkeypatch.setattr(digits, 'store_atomically', functools.partial(
        digits.store_atomically, file_format='tfrecord'))
    tfrecord_dir = str(tmp_path / 'tfrecord')
    builder = digits.prepare(tfrecord_dir)
    assert not any(f.endswith('array_record') for f in os.listdir(builder.data_dir))
    config = make_config(data_dir=digits_dir)
    config.pp.update(augment='inception', flip=True, test='test[:50]')
    expected = [next(create_datasets(config, start=1437 * 3)[0])['image'],
                np.concatenate([b['image'] for b in create_datasets(config)[1]()])]
    config.tfds_data_dir = tfrecord_dir
    for _ in range(2):  # Converts, then reads the copy.
        np.testing.assert_array_equal(next(create_datasets(config, start=1437 * 3)[0])['image'],
                                      expected[0])
        np.testing.assert_array_equal(
            np.concatenate([b['image'] for b in create_datasets(config)[1]()]), expected[1])
    copies = sorted(os.listdir(os.path.join(builder.data_dir, 'vit_jax_array_record')))
    assert copies == ['test_50_.array_record', 'train.array_record']
