"""Tests of the input pipeline: digits, image folders, tfds (mocked), padding and errors."""

import collections
import functools
import math
import os
import re
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import DatasetInfo, create_datasets, digits, model_inputs, pad_batch
from vit_jax.errors import DataError
from vit_jax.normalization import NORMALIZATIONS, normalize


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
        'skip_bad_images': False,
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
        assert batch['image'].shape == (7, 8, 8, 3) and batch['image'].dtype == np.uint8
        assert batch['label'].shape == (7,) and batch['label'].dtype == np.int32
    mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
    labels = np.concatenate([b['label'] for b in batches])[mask]
    images = np.concatenate([b['image'] for b in batches])[mask]
    assert mask.sum() == 360 and mask[:360].all()
    assert collections.Counter(labels) == collections.Counter(split_labels()[1])

    # The eval images are exactly the sklearn test digits (8x8, no resizing), with their labels.
    sk_images, sk_labels = digits.images_and_labels()
    _, test = digits.split_indices(sk_labels)
    expected = {sk_images[i].tobytes(): sk_labels[i] for i in test}
    assert {p.tobytes(): label for p, label in zip(images, labels, strict=True)} == expected
    assert list(make_eval_iterator())[0]['label'].tolist() == batches[0]['label'].tolist()


def test_uint8_batches_give_the_float32_paths_model_inputs_to_rounding(digits_dir):
    # The float32 path: resize the decoded digit (bilinear), normalise. The uint8 path rounds
    # the resized pixels to uint8 on the host and normalises in the step (model_inputs).
    config = make_config(data_dir=digits_dir)
    digits_8x8 = next(create_datasets(config)[1]())['image']  # the digits as decoded
    config.pp.update(crop=12, normalize='imagenet')
    batch = next(create_datasets(config)[1]())
    assert batch['image'].dtype == np.uint8 and batch['image'].shape == (7, 12, 12, 3)
    got = np.asarray(jax.jit(model_inputs, static_argnums=1)(batch, 'imagenet'))
    resized = tf.image.resize(digits_8x8, [12, 12]).numpy()
    want = normalize(resized, **NORMALIZATIONS['imagenet'])
    assert not np.array_equal(resized, np.round(resized))  # the rounding is exercised
    half_level = 0.5 / (255 * np.float32(NORMALIZATIONS['imagenet']['std']))
    assert (np.abs(got - want) <= half_level + 1e-6).all()
    np.testing.assert_allclose(got, normalize(np.round(resized), **NORMALIZATIONS['imagenet']),
                               atol=1e-6)


@pytest.mark.parametrize(
    'augment, flip', [('inception', True), ('pad_crop', True), ('none', False)]
)
def test_digits_train_batches(digits_dir, augment, flip):
    config = make_config(data_dir=digits_dir)
    config.pp.update(augment=augment, flip=flip, crop=12)
    train, _, _ = create_datasets(config)
    for _ in range(3):
        batch = next(train)
        assert batch['image'].shape == (16, 12, 12, 3) and batch['image'].dtype == np.uint8
        assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
        assert batch['seed'].shape == (16, 2) and batch['seed'].dtype == np.uint32
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
        bright = batch['image'].mean(axis=(1, 2, 3)) > 127.5  # Cats are bright, dogs dark.
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


def test_a_launch_checks_each_image_of_a_folder_once(image_folder, tmp_path_factory,
                                                     monkeypatch):
    """Training, evaluation and few-shot evaluation read the dataset the launch opened: each
    image file is checked once (it was three times: the info, the streams, few-shot)."""
    import scale_worker

    from vit_jax.data import folders
    from vit_jax.train import loop

    checked, check = [], folders.image_problem
    monkeypatch.setattr(folders, 'image_problem', lambda path: checked.append(path) or check(path))
    config = scale_worker.make_config([
        ('dataset', str(image_folder)), ('batch', '4'), ('batch_eval', '2'),
        ('total_steps', '2'), ('fewshot_every', '2'), ('fewshot_shots', '(1,)')])
    final = loop.train(config, str(tmp_path_factory.mktemp('run')))
    images = [str(p) for p in image_folder.rglob('*') if p.suffix.lower() != '.txt' and p.is_file()]
    assert sorted(checked) == sorted(images) and len(images) == 8
    assert final['count'] == 3


BAD_IMAGES = {  # file name -> (bytes, the reason the check gives)
    'empty.jpg': (b'', 'empty file'),
    'cut.jpg': (None, r'truncated JPEG \(no end marker\)'),
    'cut.png': (None, r'truncated PNG \(no IEND chunk\)'),
    '._mac.jpg': (b'\x00\x05\x16\x07' + bytes(100), 'macOS resource fork'),
    'text.jpg': (b'hello, not an image', r"not a JPEG or PNG \(starts with b'hell'\)"),
}


def add_bad_images(folder):
    jpeg = tf.io.encode_jpeg(tf.fill((8, 8, 3), tf.constant(9, tf.uint8))).numpy()
    png = tf.io.encode_png(tf.fill((8, 8, 3), tf.constant(9, tf.uint8))).numpy()
    for name, (data, _) in BAD_IMAGES.items():
        if data is None:
            data = (jpeg if name.endswith('.jpg') else png)[:-20]
        (folder / 'train' / 'dog' / name).write_bytes(data)


def test_folder_with_bad_images_names_each_one(image_folder):
    # Issue 14, point 5: every bad file by path and kind, in one error, before any decoding.
    add_bad_images(image_folder)
    with pytest.raises(DataError) as error:
        create_datasets(make_config(str(image_folder)))
    message = str(error.value)
    assert message.startswith('5 of 10 image files cannot be read: ') and '\n' not in message
    for name, (_, reason) in BAD_IMAGES.items():
        assert re.search(re.escape(str(image_folder / 'train' / 'dog' / name)) + ': ' + reason,
                         message), name
    assert message.endswith('or set --config.skip_bad_images=True to train without them.')


def test_folder_skips_bad_images_when_asked(image_folder):
    add_bad_images(image_folder)
    config = make_config(str(image_folder))
    config.skip_bad_images = True
    train, _, info = create_datasets(config)
    assert (info.num_train, len(info.skipped)) == (5, 5)
    assert next(train)['image'].shape == (16, 8, 8, 3)
    assert sorted(line.split(': ')[0] for line in info.skipped) == sorted(
        str(image_folder / 'train' / 'dog' / name) for name in BAD_IMAGES)


def test_an_image_that_fails_to_decode_mid_run_names_its_record(image_folder):
    # Whole by its first and last bytes, broken inside: the decoder fails; the error names
    # the dataset, the split and the record: in a folder, its file (issue 27).
    jpeg = tf.io.encode_jpeg(tf.fill((8, 8, 3), tf.constant(9, tf.uint8))).numpy()
    (image_folder / 'test' / 'dog' / 'g.png').unlink()
    (image_folder / 'test' / 'dog' / 'g.jpg').write_bytes(jpeg[:3] + bytes(50) + jpeg[-2:])
    _, make_eval_iterator, _ = create_datasets(make_config(str(image_folder)))
    with pytest.raises(DataError, match=rf"^cannot decode {image_folder}/test/dog/g.jpg of "
                                        rf"split 'test' of '{image_folder}' \(jpeg::Uncompress "
                                        r"failed.*\); the data is damaged"):
        list(make_eval_iterator())


def test_nested_folders_count_as_their_class_and_empty_classes_are_errors(image_folder):
    # Issue 14, point 8: as torchvision's ImageFolder, images in sub-folders of a class belong
    # to it; a class folder without images is an error, not a class that never occurs.
    write_image(image_folder / 'train' / 'cat' / 'more' / 'deeper' / 'x.png', 250, (4, 4, 3))
    info = create_datasets(make_config(str(image_folder)))[2]
    assert (info.num_train, info.class_names) == (6, ('cat', 'dog'))
    (image_folder / 'train' / 'bird' / 'sub').mkdir(parents=True)
    with pytest.raises(DataError, match=r"^1 class folder\(s\) hold no image: .*train/bird; "):
        create_datasets(make_config(str(image_folder)))


def test_a_misspelt_folder_path_is_no_such_folder(image_folder):
    # Issue 14, point 7: not "Parsing builder name string ... failed".
    for path in (str(image_folder) + 'x', str(image_folder / 'nope'), './runs/no/such'):
        with pytest.raises(DataError, match=rf"^No such folder '{re.escape(path)}'"):
            create_datasets(make_config(path))


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
    decoded = pipeline._decode(jpeg).numpy()  # the whole image, decoded as training does
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


# Issue 27: folder datasets are never silently wrong.

@pytest.mark.parametrize('mode, options', [
    ('RGB', {'quality': 95}), ('RGB', {'quality': 60, 'subsampling': 2}),
    ('RGB', {'progressive': True}), ('L', {}), ('CMYK', {})])
def test_training_and_predict_decode_a_jpeg_to_the_same_pixels(tmp_path, mode, options):
    from PIL import Image

    from vit_jax.data import pipeline
    from vit_jax.predict import read_image

    rng = np.random.RandomState(0)
    smooth = np.clip(np.cumsum(rng.randn(30, 40, 3) * 8, axis=1) + 128, 0, 255)
    path = tmp_path / 'x.jpg'
    Image.fromarray(smooth.astype(np.uint8)).convert(mode).save(path, 'JPEG', **options)
    encoded = tf.constant(path.read_bytes())
    pixels = read_image(str(path))
    np.testing.assert_array_equal(pipeline._decode(encoded).numpy(), pixels)
    crop = pipeline._decode_inception_crop(encoded, tf.constant([1, 2], tf.int64), 0.3).numpy()
    assert any(np.array_equal(pixels[i:i + crop.shape[0], j:j + crop.shape[1]], crop)
               for i in range(31 - crop.shape[0]) for j in range(41 - crop.shape[1]))


@pytest.mark.parametrize('breakage, message', [
    ('loop', r"cat/up/cat is .*train/cat again \(a symlink loop, or two links to one folder\)"),
    ('newline', r"class folder names \['ca\\nt'\] in .* hold a line break"),
    ('one_class', r"train holds one class folder, 'cat'; a classifier needs two or more"),
])
def test_folder_symlink_loops_odd_class_names_and_one_class_are_refused(image_folder, breakage,
                                                                        message):
    if breakage == 'loop':
        os.symlink('..', image_folder / 'train' / 'cat' / 'up')
    elif breakage == 'newline':
        os.rename(image_folder / 'train' / 'cat', image_folder / 'train' / 'ca\nt')
    else:
        for split in ('train', 'test'):
            for path in (image_folder / split / 'dog').iterdir():
                path.unlink()
            (image_folder / split / 'dog').rmdir()
    with pytest.raises(DataError, match=message):
        create_datasets(make_config(str(image_folder)))


def test_folder_symlinks_to_files_and_folders_are_followed(image_folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp('elsewhere')
    write_image(elsewhere / 'a.jpg', 250, (8, 8, 3))
    os.symlink(elsewhere, image_folder / 'train' / 'cat' / 'more')
    os.symlink(elsewhere / 'a.jpg', image_folder / 'train' / 'cat' / 'b.jpg')
    info = create_datasets(make_config(str(image_folder)))[2]
    assert (info.class_names, info.num_train) == (('cat', 'dog'), 7)
