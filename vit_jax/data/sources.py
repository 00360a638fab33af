"""Random-access sources of encoded examples: a tfds ArrayRecord split, an ArrayRecord copy of a
TFRecord split, the files of an image folder. Each reads `(encoded images, labels)` by index, so
the train stream can start at any position without reading what comes before.

Who reads what in a bucket: tfds reads a dataset's metadata (`dataset_info.json`,
`features.json`) through etils.epath (fsspec, as `vit_jax.storage` configures it); array_record's
own C++ reader reads the ArrayRecord files by byte range (its GCS client, pointed at an emulator
by `CLOUD_STORAGE_EMULATOR_ENDPOINT`; it opens no other store, so files in `s3://` are copied
first: `local_copy`); TFRecord files and image files are read through `vit_jax.storage`
(TensorFlow's gfile ignores emulators)."""

import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

import google_crc32c
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath

from vit_jax import storage
from vit_jax.errors import DataError

_LABEL = struct.Struct('<q')  # An ArrayRecord copy's record: int64 label, then the image bytes.
_TFRECORD_HEAD = struct.Struct('<QI')  # A TFRecord: length, its masked CRC, data, data's CRC.
_CRC = struct.Struct('<I')


class Source(Protocol):
    """`size` examples, read by index."""

    size: int

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """The encoded images and int64 labels `[n]` of examples `indices` `[n]`."""

    def describe(self, index: int) -> str:
        """Example `index` in words, for an error naming it."""


class TfdsSource:
    """A split of a tfds dataset stored as ArrayRecord (`tfds.data_source`); raises
    `NotImplementedError` for a TFRecord one."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        self._data = builder.as_data_source(
            split, decoders={'image': tfds.decode.SkipDecoding()})
        self.size = len(self._data)

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        examples = [self._data[int(i)] for i in indices]
        return [e['image'] for e in examples], np.array([e['label'] for e in examples], np.int64)

    def describe(self, index: int) -> str:
        return f'record {index}'


def local_copy(builder: tfds.core.DatasetBuilder, split: str, folder: epath.Path
               ) -> tfds.core.DatasetBuilder:
    """A builder of the files of `split` and the metadata of the ArrayRecord dataset of
    `builder` (in a bucket), copied once to the local `folder`, each file through a temporary
    name."""
    source = storage.path(builder.data_dir)
    shards = [storage.path(f.filename).name for f in builder.info.splits[split].file_instructions]
    metadata = [p.name for p in source.iterdir() if not p.name.startswith(f'{builder.name}-')]
    folder.mkdir(parents=True, exist_ok=True)
    for name in metadata + shards:
        if not (folder / name).exists():
            fd, tmp = tempfile.mkstemp(prefix='.partial-', dir=os.fspath(folder))
            try:
                with (source / name).open('rb') as src, os.fdopen(fd, 'wb') as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
                os.replace(tmp, os.fspath(folder / name))
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    return tfds.builder_from_directory(os.fspath(folder))


def tfrecord_examples(builder: tfds.core.DatasetBuilder, split: str
                      ) -> Iterator[tuple[bytes, int]]:
    """`(encoded image, label)` of each example of `split` of a TFRecord tfds dataset, in order,
    read through `vit_jax.storage` (local or in a bucket), each record's CRC checked."""
    features = builder.info.features
    decoders = {'image': tfds.decode.SkipDecoding()}
    for shard in builder.info.splits[split].file_instructions:
        with storage.path(shard.filename).open('rb') as f:
            for k, record in enumerate(_tfrecords(f, shard.filename)):
                if k >= shard.skip + shard.take:
                    break
                if k >= shard.skip:
                    example = features.deserialize_example_np(record, decoders=decoders)
                    yield example['image'], example['label']


def _tfrecords(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The records of the TFRecord file `f` (named `name` in errors)."""
    while head := f.read(_TFRECORD_HEAD.size):
        length, length_crc = _TFRECORD_HEAD.unpack(head.ljust(_TFRECORD_HEAD.size, b'\0'))
        whole = len(head) == _TFRECORD_HEAD.size and length_crc == _masked_crc(head[:8])
        record = f.read(length) if whole else b''
        if not whole or len(record) != length or f.read(4) != _CRC.pack(_masked_crc(record)):
            raise DataError(f'{name}: a damaged or cut-short TFRecord file (a CRC does not '
                            'match); prepare that dataset again.')
        yield record


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


class ArrayRecordFile:
    """Examples written by `write_array_record`."""

    def __init__(self, path: str):
        self._reader = array_record_module.ArrayRecordReader(path)
        self.size = self._reader.num_records()

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        records = self._reader.read([int(i) for i in indices])
        return ([r[_LABEL.size:] for r in records],
                np.array([_LABEL.unpack_from(r)[0] for r in records], np.int64))

    def describe(self, index: int) -> str:
        return f'record {index}'


def write_array_record(examples: Iterable[tuple[bytes, int]], path: str) -> None:
    """Writes `(encoded image, label)` pairs, in order, to the ArrayRecord file `path` (through a
    temporary file, so a reader never sees a partial one)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.partial-', dir=os.path.dirname(path))
    os.close(fd)
    try:
        writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
        for image, label in examples:
            writer.write(_LABEL.pack(int(label)) + image)
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FileList:
    """Image files (local paths or URLs) and their labels."""

    def __init__(self, paths: list[str], labels: list[int]):
        self._paths, self._labels = paths, np.array(labels, np.int64)
        self.size = len(paths)

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        return [storage.path(self._paths[i]).read_bytes() for i in indices], self._labels[indices]

    def describe(self, index: int) -> str:
        return self._paths[index]
