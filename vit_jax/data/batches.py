"""What every part of the input pipeline shares: batches, a dataset's description, padding, and
the training augmentations there are."""

from __future__ import annotations

import dataclasses

import numpy as np

AUGMENTATIONS = ('inception', 'pad_crop', 'none')
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset."""

    name: str  # 'digits', a tfds name such as 'cifar10', or the folder path.
    num_classes: int
    num_train: int  # Examples in the train split actually used (all processes).
    num_eval: int  # Examples in the eval split (all processes).
    class_names: tuple[str, ...]
    # Image files the start-up check found unreadable and left out ('path: reason' each).
    skipped: tuple[str, ...] = ()


def pad_batch(batch: Batch, size: int) -> Batch:
    """Pads every array of `batch` with zeros along axis 0 up to `size` rows.

    Args:
        batch: arrays with the same leading dimension `n <= size`, e.g. `image` [n, h, w, 3] and
            `label` [n]; an optional `mask` [n] marks which rows are real.
        size: the batch size to pad to.

    Returns:
        The padded arrays, each [size, ...], with `mask` [size] (float32 when `batch` has none):
        the old mask (or 1) for the first `n` rows, 0 for the padding.
    """
    sizes = {name: len(array) for name, array in batch.items()}
    n = next(iter(sizes.values()))
    if set(sizes.values()) != {n} or n > size:
        raise ValueError(f'pad_batch needs arrays of one length <= {size}, got lengths {sizes}.')
    batch = {'mask': np.ones(n, np.float32), **batch}
    return {
        name: np.pad(array, [(0, size - n)] + [(0, 0)] * (array.ndim - 1))
        for name, array in batch.items()
    }
