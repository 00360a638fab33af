"""Random-access sources of encoded examples: a tfds ArrayRecord split, an ArrayRecord copy of a
TFRecord split, the files of an image folder. Each reads `(encoded images, labels)` by index, so
the train stream can start at any position without reading what comes before."""

import os
import struct
import tempfile
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

_LABEL = struct.Struct('<q')  # An ArrayRecord copy's record: int64 label, then the image bytes.


class Source(Protocol):
    """`size` examples, read by index."""

    size: int

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """The encoded images and int64 labels `[n]` of examples `indices` `[n]`."""


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


class ArrayRecordFile:
    """Examples written by `write_array_record`."""

    def __init__(self, path: str):
        self._reader = array_record_module.ArrayRecordReader(path)
        self.size = self._reader.num_records()

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        records = self._reader.read([int(i) for i in indices])
        return ([r[_LABEL.size:] for r in records],
                np.array([_LABEL.unpack_from(r)[0] for r in records], np.int64))


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
    """Image files and their labels."""

    def __init__(self, paths: list[str], labels: list[int]):
        self._paths, self._labels = paths, np.array(labels, np.int64)
        self.size = len(paths)

    def read(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        images = []
        for i in indices:
            with open(self._paths[i], 'rb') as f:
                images.append(f.read())
        return images, self._labels[indices]
