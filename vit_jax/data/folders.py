"""Image folders `root/<split>/<class>/**/*.jpg|*.jpeg|*.png`: the class folders and their image
files, as torchvision's `ImageFolder` finds them (every file with an image extension below a
class folder, sub-folders included, in sorted order), and a cheap check of every file at
start-up (its first and last bytes), so a bad file is named before training rather than met
by the decoder mid-run. Folders may be local or in a bucket (`vit_jax.storage`); files are
checked in parallel, for a bucket's latency. No TensorFlow here."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import sys

from etils import epath

from vit_jax import storage
from vit_jax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_JPEG_START, _JPEG_END = b'\xff\xd8\xff', b'\xff\xd9'
_PNG_START, _PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
_PROGRESS_FROM = 5_000  # files: check with a progress line from this many on
_THREADS = 32  # files checked at once


def class_names(split_dir: epath.Path) -> tuple[str, ...]:
    """The sorted class folders of `split_dir`."""
    if not split_dir.is_dir():
        raise DataError(
            f'Missing folder {split_dir}: a folder dataset needs root/<split>/<class>/*.jpg; '
            'create it, or set --config.pp.train / --config.pp.test to the split folders.'
        )
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not names:
        raise DataError(
            f'No class folders in {split_dir}: put the images of each class into their own '
            f'folder, {split_dir}/<class>/*.jpg.'
        )
    broken = [name for name in names if '\n' in name or '\r' in name]
    if broken:
        raise DataError(f'class folder names {broken} in {split_dir} hold a line break, which '
                        f'the run\'s classes.txt (one name per line) cannot; rename them.')
    return tuple(names)


def list_images(split_dir: epath.Path, names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """The image paths (URLs in a bucket) below the class folders `names` of `split_dir`
    (sub-folders included) and their labels, sorted; a class folder that exists but holds no
    image is an error."""
    paths, labels, empty = [], [], []
    for label, name in enumerate(names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        found = [f for f in storage.files_below(class_dir)
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        empty += [] if found else [os.fspath(class_dir)]
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(
            f'No images in {split_dir}/<class>/: add files ending in {", ".join(IMAGE_EXTENSIONS)} '
            '(any case).'
        )
    if empty:
        raise DataError(
            f'{len(empty)} class folder(s) hold no image: {", ".join(empty)}; add images '
            f'(ending in {", ".join(IMAGE_EXTENSIONS)}) or remove the folder.'
        )
    return paths, labels


def image_problem(path: str) -> str | None:
    """Why the file `path` (a local path or a URL) cannot be a whole JPEG or PNG image (empty,
    another format, cut short), from its first 8 and last 1,024 bytes (where the end marker of
    a whole image lies, padding or trailing data allowed); None when it looks whole."""
    try:
        with storage.path(path).open('rb') as f:
            head = f.read(8)
            if not head:
                return 'empty file'
            f.seek(max(0, f.seek(0, os.SEEK_END) - 1024))
            tail = f.read()
    except OSError as e:
        return f'unreadable ({e.strerror or e})'
    if head.startswith(_JPEG_START):
        return None if _JPEG_END in tail else 'truncated JPEG (no end marker)'
    if head.startswith(_PNG_START):
        return None if _PNG_END in tail else 'truncated PNG (no IEND chunk)'
    if head.startswith(b'\x00\x05\x16\x07'):
        return 'macOS resource fork (AppleDouble "._" file), not an image'
    return f'not a JPEG or PNG (starts with {head[:4]!r})'


def check_images(paths: list[str], labels: list[int], *, skip: bool,
                 ) -> tuple[list[str], list[int], list[str]]:
    """`(paths, labels, skipped)`: with `skip`, the files that pass `image_problem` and the
    others as `'path: reason'`; without, a `DataError` listing every bad file. Prints a
    progress line (to stderr) for large folders."""
    bad = []
    progress = len(paths) >= _PROGRESS_FROM
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        problems = itertools.chain.from_iterable(  # 1,000 files at a time, in order
            pool.map(image_problem, paths[i:i + 1000]) for i in range(0, len(paths), 1000))
        for i, (path, problem) in enumerate(zip(paths, problems, strict=True)):
            if problem:
                bad.append((i, f'{path}: {problem}'))
            if progress and (i + 1) % 1000 == 0 or progress and i + 1 == len(paths):
                print(f'\rChecking images: {i + 1:,}/{len(paths):,}, {len(bad)} bad',
                      end='\n' if i + 1 == len(paths) else '', file=sys.stderr, flush=True)
    if bad and not skip:
        raise DataError(
            f'{len(bad)} of {len(paths)} image files cannot be read: '
            f'{"; ".join(text for _, text in bad)}; delete or replace them, or set '
            f'--config.skip_bad_images=True to train without them.'
        )
    left_out = {i for i, _ in bad}
    return ([p for i, p in enumerate(paths) if i not in left_out],
            [label for i, label in enumerate(labels) if i not in left_out],
            [text for _, text in bad])
