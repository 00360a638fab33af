"""Input pipeline benchmark: vit_jax's `create_datasets` against timm's DataLoader on the same
JPEG files with the same recipe, in one run.

Builds (once, in `--workdir`) an ImageNet-like set offline: `--num_images` JPEGs of about
`--width`x`--height` at quality 90 in `--classes` classes, random crops and colour shifts of the
photos that ship with scikit-image. It is stored as an image folder and as a tfds dataset in
TFRecord and ArrayRecord format (the same JPEG bytes).

Prints, per source and recipe: images per second (wall), images per CPU-second (all threads and
worker processes: `resource.getrusage`), the vit_jax / timm ratio of images per CPU-second
(medians over `--rounds` interleaved rounds), bytes per image handed to the device, and the time
from `create_datasets(config, start)` to the first batch at `start` = 0, 1, 5 and 20 epochs.

    PYTHONPATH=. python scripts/benchmark_input.py                       # a few minutes, 2 cores
    PYTHONPATH=. python scripts/benchmark_input.py --num_images=5000 --batch=128 --rounds=5
"""

import argparse
import contextlib
import itertools
import os
import resource
import statistics
import sys
import time

import numpy as np
import psutil

RECIPES = {
    # The original ViT fine-tuning recipe: inception crop (area 5-100 %) and flip.
    'original': {},
    # DeiT's: RandAugment 2 ops at m9 mstd0.5, random erasing 0.25 (pixel mode).
    'deit': {'randaug_layers': 2, 'randaug_magnitude': 9, 'randaug_magnitude_std': 0.5,
             'erase_prob': 0.25},
}
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
          'camera', 'logo', 'retina', 'colorwheel')


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', default='/tmp/vit_jax_input_benchmark')
    parser.add_argument('--num_images', type=int, default=1000)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--width', type=int, default=500)
    parser.add_argument('--height', type=int, default=375)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--crop', type=int, default=224)
    parser.add_argument('--batches', type=int, default=16, help='batches timed per round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--workers', type=int, default=os.cpu_count(),
                        help="timm DataLoader worker processes")
    parser.add_argument('--recipes', default='original,deit')
    parser.add_argument('--sources', default='folder,tfrecord,array_record',
                        help='folder, tfrecord, array_record (the tfds formats)')
    parser.add_argument('--epochs', default='0,1,5,20', help='resume positions, in epochs')
    parser.add_argument('--no_timm', action='store_true')
    return parser.parse_args(argv)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its children, live (the
    DataLoader's workers) or ended."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    total = sum(u.ru_utime + u.ru_stime for u in usage)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def build_images(args: argparse.Namespace) -> str:
    """Writes `root/{train,test}/<class>/*.jpg` once; returns `root`."""
    from PIL import Image
    from skimage import data as skdata

    root = os.path.join(args.workdir, f'folder_{args.num_images}_{args.width}x{args.height}')
    if os.path.isdir(root):
        return root
    rng = np.random.default_rng(0)
    photos = []
    for name in PHOTOS:
        photo = np.asarray(getattr(skdata, name)())  # All ship with scikit-image.
        photo = np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3]
        photos.append(photo.astype(np.uint8))
    tmp = root + '.tmp'
    num_test = max(args.classes, args.num_images // 10)
    for split, count in (('train', args.num_images), ('test', num_test)):
        for i in range(count):
            label = i % args.classes
            photo = photos[label % len(photos)]
            h, w = photo.shape[:2]
            ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[top:top + ch, left:left + cw].astype(np.float32)
            crop = np.clip(crop * rng.uniform(0.7, 1.3, 3) + rng.uniform(-20, 20, 3), 0, 255)
            scale = rng.uniform(0.8, 1.2, 2)
            size = (int(args.width * scale[0]), int(args.height * scale[1]))
            image = Image.fromarray(crop.astype(np.uint8)).resize(size, Image.BILINEAR)
            folder = os.path.join(tmp, split, f'class_{label:03d}')
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f'{i:06d}.jpg'), quality=90)
    os.rename(tmp, root)
    return root


def build_tfds(root: str, args: argparse.Namespace, file_format: str) -> str:
    """Stores the folder's JPEG bytes as a tfds dataset (once); returns its data dir."""
    import tensorflow_datasets as tfds

    from vit_jax.data.digits import store_atomically

    data_dir = os.path.join(args.workdir, f'tfds_{os.path.basename(root)}_{file_format}')
    path = os.path.join(data_dir, 'bench_images', '1.0.0')
    if os.path.isdir(path):
        return path
    classes = sorted(os.listdir(os.path.join(root, 'train')))
    splits = {}
    for split in ('train', 'test'):
        examples = []
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            for file in sorted(os.listdir(folder)):
                examples.append((f'{name}/{file}',
                                 {'image': os.path.join(folder, file), 'label': label}))
        splits[split] = examples
    os.makedirs(data_dir, exist_ok=True)
    store_atomically(
        data_dir, path, name='bench_images', version='1.0.0',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=classes),
        }),
        split_datasets=splits, description='benchmark_input.py JPEGs', file_format=file_format)
    return path


def make_config(source: str, paths: dict[str, str], recipe: str, args: argparse.Namespace):
    """The base config reading `source` (the folder, or a tfds data dir) with `recipe`."""
    from vit_jax import config as config_lib

    config = config_lib.base_config()
    if source == 'folder':
        config.dataset = paths[source]
    else:  # paths[source] is data_dir/bench_images/1.0.0
        config.dataset = 'bench_images'
        config.tfds_data_dir = os.path.dirname(os.path.dirname(paths[source]))
    config.batch = config.batch_eval = args.batch
    config.pp.crop = args.crop
    config.pp.update(RECIPES[recipe])
    return config


def ours(config, start: int = 0):
    from vit_jax.data import create_datasets

    return create_datasets(config, start)[0]


def time_rate(iterator, batches: int, batch: int) -> tuple[float, float, int]:
    """(img/s, img/CPU-s, bytes/image) over `batches` batches after one warm-up batch of
    `iterator`, which yields vit_jax's `{'image': ...}` or torch's `(images, labels)`."""
    first = next(iterator)
    images = first['image'] if isinstance(first, dict) else first[0].numpy()
    image_bytes = images.nbytes // len(images)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return batches * batch / wall, batches * batch / cpu, image_bytes


def timm_loader(root: str, recipe: str, args: argparse.Namespace):
    """timm's train transform for `recipe` in a DataLoader over `root/train`, as DeiT builds it."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
    import torch
    import torch_reference

    timm = torch_reference.import_timm()
    from timm.data import auto_augment

    from vit_jax import config as config_lib

    def posterize(img, bits_to_keep, **_):  # Pillow >= 13 raises at 0 bits; older gave black.
        if bits_to_keep >= 8:
            return img
        if bits_to_keep <= 0:
            return img.point(lambda _: 0)
        return auto_augment.ImageOps.posterize(img, bits_to_keep)

    for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
        auto_augment.NAME_TO_OP[name] = posterize
    area_min = config_lib.base_config().pp.area_min
    if recipe == 'original':
        transform = timm.data.create_transform(args.crop, is_training=True, scale=(area_min, 1.0),
                                               color_jitter=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    else:
        transform = timm.data.create_transform(
            args.crop, is_training=True, scale=(area_min, 1.0), auto_augment='rand-m9-mstd0.5-inc1',
            interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1)
    dataset = timm.data.ImageDataset(os.path.join(root, 'train'), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                       num_workers=args.workers, drop_last=True,
                                       persistent_workers=True)


def _epochs(loader):
    """The loader's batches, epoch after epoch."""
    return itertools.chain.from_iterable(loader for _ in itertools.count())


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    root = build_images(args)
    sources = args.sources.split(',')
    paths = {'folder': root}
    for source in sources:
        if source != 'folder':
            paths[source] = build_tfds(root, args, source)
    num_train = args.num_images
    print(f'{num_train} train JPEGs about {args.width}x{args.height} in {root}; batch '
          f'{args.batch}, crop {args.crop}, {os.cpu_count()} CPUs, {args.rounds} rounds of '
          f'{args.batches} batches (medians)')

    next(ours(make_config('folder', paths, 'original', args)))  # TensorFlow's one-time start-up.
    print('\n| source | position (epochs) | first batch (s) |\n|---|---:|---:|')
    for source in sources:
        for epochs in (int(e) for e in args.epochs.split(',')):
            config = make_config(source, paths, 'original', args)
            begin = time.perf_counter()
            try:
                next(ours(config, epochs * num_train))
            except NotImplementedError as error:  # A pipeline that cannot read this format.
                print(f'| {source} | {epochs} | unsupported: {str(error)[:60]} |')
                break
            print(f'| {source} | {epochs} | {time.perf_counter() - begin:.2f} |', flush=True)

    print('\n| recipe | pipeline | img/s | img/CPU-s | vs timm (CPU-s) | bytes/image |\n'
          '|---|---|---:|---:|---:|---:|')
    for recipe in args.recipes.split(','):
        rates = {}
        loader = None if args.no_timm else timm_loader(root, recipe, args)
        for _ in range(args.rounds):
            for source in sources:
                try:
                    rate = time_rate(ours(make_config(source, paths, recipe, args)),
                                     args.batches, args.batch)
                except NotImplementedError:
                    continue
                rates.setdefault(f'vit_jax {source}', []).append(rate)
            if loader is not None:
                rates.setdefault('timm DataLoader folder', []).append(
                    time_rate(_epochs(loader), args.batches, args.batch))
        timm_rate = statistics.median(r[1] for r in rates.get('timm DataLoader folder', [(0, 0)]))
        for name, runs in rates.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            ratio = f'{cpu / timm_rate:.2f}x' if timm_rate else '-'
            print(f'| {recipe} | {name} | {wall:.0f} | {cpu:.0f} | {ratio} | {runs[0][2]:,} |',
                  flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
