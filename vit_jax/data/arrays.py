"""Datasets held in memory as numpy arrays, without TensorFlow (tests, small experiments).

Global batch `t` is the same for any number of processes: examples are drawn epoch by epoch
in a permutation seeded by `(seed, epoch)`, and process `p` of `P` takes rows
`p * batch / P ... (p + 1) * batch / P` of each global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from vit_jax.data import Batch, DatasetInfo, pad_batch

Datasets = tuple[Iterator[Batch], Callable[[], Iterator[Batch]], DatasetInfo]


def array_datasets(train_images: np.ndarray, train_labels: np.ndarray,
                   eval_images: np.ndarray, eval_labels: np.ndarray, num_classes: int,
                   ) -> Callable[[ml_collections.ConfigDict, int], Datasets]:
    """`make(config, start) -> (train_iterator, make_eval_iterator, info)`, as
    `vit_jax.data.create_datasets`, over images `[n, h, w, c]` (uint8 pixels, or float32 model
    inputs: see `vit_jax.data.device.model_inputs`) and labels `[n]` int.

    The train stream starts after `start` examples (the resume position); its batches carry
    each example's key `seed` uint32 [rows, 2] = `(seed, position)`. Eval batches are padded,
    with `mask` 0, so every example counts once, and read the train arrays when `pp.test` names
    the train split (`pp.train`). Uses `batch`, `batch_eval`, `seed`, `pp`.
    """
    info = DatasetInfo('arrays', num_classes, len(train_labels), len(eval_labels),
                       tuple(str(i) for i in range(num_classes)))

    def make(config: ml_collections.ConfigDict, start: int = 0) -> Datasets:
        rows = _process_rows(config.batch)

        def train_iterator() -> Iterator[Batch]:
            for first in range(start, 2 ** 62, config.batch):
                index = _example_indices(first, config.batch, len(train_labels), config.seed)
                positions = np.arange(first, first + config.batch)[rows]
                seeds = np.stack([np.full_like(positions, config.seed), positions], -1)
                yield {'image': train_images[index[rows]], 'label': train_labels[index[rows]],
                       'seed': seeds.astype(np.uint32)}

        images, labels = ((train_images, train_labels) if config.pp.test == config.pp.train
                          else (eval_images, eval_labels))

        def eval_iterator() -> Iterator[Batch]:
            eval_rows = _process_rows(config.batch_eval)
            for first in range(0, len(labels), config.batch_eval):
                batch = pad_batch({'image': images[first:first + config.batch_eval],
                                   'label': labels[first:first + config.batch_eval]},
                                  config.batch_eval)
                yield {k: v[eval_rows] for k, v in batch.items()}

        return train_iterator(), eval_iterator, info

    return make


def _process_rows(batch: int) -> slice:
    """The rows of a global batch that this process reads."""
    per_process = batch // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def _example_indices(first: int, count: int, size: int, seed: int) -> np.ndarray:
    """Dataset indices of global examples `first ... first + count - 1`."""
    positions = np.arange(first, first + count)
    epochs = positions // size
    order = {e: np.random.default_rng([seed, e]).permutation(size)
             for e in range(int(epochs[0]), int(epochs[-1]) + 1)}
    return np.array([order[e][p % size] for e, p in zip(epochs, positions, strict=True)])

