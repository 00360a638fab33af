"""Input pipeline: train and eval iterators over tfds datasets, `digits` and image folders.

Importing this package does not import TensorFlow; `create_datasets` imports it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import jax

from vit_jax.data.batches import AUGMENTATIONS as AUGMENTATIONS
from vit_jax.data.batches import Batch as Batch
from vit_jax.data.batches import DatasetInfo as DatasetInfo
from vit_jax.data.batches import pad_batch as pad_batch
from vit_jax.data.device import model_inputs as model_inputs
from vit_jax.errors import DataError
from vit_jax.normalization import NORMALIZATIONS

if TYPE_CHECKING:  # the models import vit_jax.normalization: no ml_collections for them
    import ml_collections


class Dataset:
    """The data `config` names, opened once: `info`, and called as `create_datasets` over it.

    The dataset and its splits `pp.train` and `pp.test` are opened when it is built (an image
    folder's files listed and checked); a call may name another split of the same dataset (the
    few-shot examples' `pp.test`), opened at its first use; no split is opened twice.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        _check_config(config)
        from vit_jax.data import pipeline  # Imports TensorFlow, so only here.

        self._opened = pipeline.open_dataset(config)
        self.info: DatasetInfo = self._opened.info(config.pp.train, config.pp.test)

    def __call__(self, config: ml_collections.ConfigDict, start: int = 0
                 ) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]], DatasetInfo]:
        """`create_datasets(config, start)` over this dataset (`config.dataset` is its name)."""
        _check_config(config)
        from vit_jax.data import pipeline

        return pipeline.create_datasets(config, start, self._opened)


def create_datasets(
    config: ml_collections.ConfigDict, start: int = 0
) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]], DatasetInfo]:
    """Builds the input pipeline that `config` describes; reads this process's share of the data.

    Args:
        config: uses `dataset`, `tfds_data_dir`, `pp` (`train`, `test`, `crop`, `augment`,
            `area_min`, `pad`, `flip`, `normalize`, `randaug_layers`, `randaug_magnitude`,
            `randaug_magnitude_std`, `erase_prob`, `repeated_aug`), `batch`, `batch_eval`,
            `input_threads` and `seed`. With `pp.repeated_aug=N`, each example comes N times
            per N passes over the data, each copy augmented independently.
        start: the data position to resume at: how many training examples all processes
            have read so far. Position `p` of the train stream is example `p % n` of a
            permutation of the `n` training examples seeded by `(seed, p // n)`, augmented
            with the seed `(seed, p)`, and read by index: resuming reads nothing it skips and
            continues exactly as if never stopped, for any process count (process `k` of `P`
            takes rows `k * batch / P ... (k + 1) * batch / P - 1` of each global batch).

    Returns:
        `(train_iterator, make_eval_iterator, info)`. The train iterator is infinite and yields
        `image` uint8 [batch / process_count, crop, crop, 3] (pixels 0..255), `label` int32
        [batch / process_count] and `seed` uint32 [batch / process_count, 2] (each example's
        key for the augmentations drawn on device). `make_eval_iterator()` returns a fresh,
        finite iterator of ceil(num_eval / batch_eval) batches of `image`, `label` and `mask`
        float32, each with batch_eval / process_count rows; the last ones are padded, with
        mask 0, so that every eval example counts exactly once. The jitted steps turn the
        images into model inputs with `vit_jax.data.device.model_inputs` (normalised as
        `pp.normalize` says, erased with probability `pp.erase_prob` in training).
    """
    return Dataset(config)(config, start)


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """The `info` that `create_datasets(config)` returns, without building the input pipeline
    (only the dataset's metadata, split sizes and file lists are read, folder images checked)."""
    return Dataset(config).info


def _check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `DataError` for settings that cannot work, before TensorFlow is imported."""
    count = jax.process_count()
    for key in ('batch', 'batch_eval'):
        if config[key] < 1 or config[key] % count:
            raise DataError(
                f'config.{key}={config[key]} must be a positive multiple of the number of '
                f'processes ({count}); set --config.{key} to a multiple of {count}.'
            )
    if config.pp.crop < 1:
        raise DataError(f'config.pp.crop={config.pp.crop} must be >= 1; set --config.pp.crop.')
    if config.pp.augment not in AUGMENTATIONS:
        raise DataError(
            f'Unknown config.pp.augment={config.pp.augment!r}; use one of {AUGMENTATIONS}.'
        )
    if config.pp.normalize not in NORMALIZATIONS:
        raise DataError(f'Unknown config.pp.normalize={config.pp.normalize!r}; use one of '
                        f'{tuple(NORMALIZATIONS)}.')
