r"""Command line: the top classes of images, with each model's own preprocessing.

    python -m vit_jax.predict --model=ViT-B_16 --weights=ViT-B_16.npz cat.jpg dog.png
    python -m vit_jax.predict --workdir=runs/digits digit.png   # a run of vit_jax.main

`--weights` takes any layout `vit_jax.weights.load` reads; the class count (and the ViT's
pre-logits width) come from the file. ImageNet-1k and -21k class names ship with the package;
`--classes=FILE` (one name per line) names other classes. With `--workdir`, the model, its options,
its weights (the latest checkpoint, read by `vit_jax.train.workdir.Workdir.load_run`), class names
(`classes.txt`) and input normalisation (`pp.normalize`) come from that training run, and images
are resized bilinearly to the run's crop (shorter side, centre crop; the eval pipeline resizes the
whole image, the same for square images). With `--model`, images are prepared as the model's
registered `pretrained_cfg` says (crop, interpolation, mean and std);
`--normalize=minus_one_one|imagenet` overrides the mean and std, for weights trained with another
normalisation than the variant's usual one.
"""

from __future__ import annotations

import importlib.resources
import io
import sys

import jax
import numpy as np

from vit_jax import cli, inference, storage
from vit_jax.errors import VitJaxError
from vit_jax.normalization import NORMALIZATIONS, normalize

IMAGENET_CLASSES = {1000: 'imagenet2012_classes.txt', 21843: 'imagenet21k_classes.txt'}


def class_names(num_classes: int, path: str | None = None) -> list[str]:
    """Names from `path` (one per line; a local file, `gs://...` or `s3://...`), ImageNet's for
    1000 or 21843 classes, else indices."""
    if path is not None:
        with storage.reporting(f'cannot read {path}', path, '--classes'):
            data = storage.path(path).read_bytes()
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise VitJaxError(f'{path} is not UTF-8 text; save the class names as UTF-8, one '
                              f'per line') from None
    elif num_classes in IMAGENET_CLASSES:
        path = IMAGENET_CLASSES[num_classes]
        text = (importlib.resources.files('vit_jax.data') / path).read_text()
    else:
        return [f'class {i}' for i in range(num_classes)]
    names = text.splitlines()
    if len(names) != num_classes:
        raise VitJaxError(f'{path} names {len(names)} classes but the model has {num_classes}')
    return names


def preprocess(path: str, pretrained_cfg: dict, size: int) -> np.ndarray:
    """Reads an image and prepares it as its model expects: shorter side resized to
    `size / crop_pct`, centre crop `size`, RGB scaled by the model's mean and std.

    Returns float32 `[size, size, 3]`.
    """
    from PIL import Image

    image = Image.fromarray(read_image(path))
    scale = size / pretrained_cfg['crop_pct'] / min(image.size)
    resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[
        pretrained_cfg['interpolation']]
    w, h = (max(size, round(d * scale)) for d in image.size)
    image = image.resize((w, h), resample)
    left, top = (w - size) // 2, (h - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
    return normalize(pixels, pretrained_cfg['mean'], pretrained_cfg['std'])


def read_image(path: str) -> np.ndarray:
    """The image file `path` (local, `gs://...` or `s3://...`) as uint8 RGB
    `[height, width, 3]`, decoded as the training pipeline decodes it (`tf.io.decode_image`):
    gray becomes RGB, 16-bit gray keeps its high byte."""
    from PIL import Image

    try:
        source = io.BytesIO(storage.path(path).read_bytes()) if storage.is_remote(path) else path
        with Image.open(source) as image:
            if image.mode.startswith('I'):  # 16-bit gray: PIL's RGB conversion would clip it
                gray = (np.asarray(image, np.uint32) >> 8).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as e:
        raise VitJaxError(f'cannot read image {path!r}: {e}') from None


def main(argv: list[str] | None = None) -> int:
    """Prints the top classes of each image (the CLI); returns the exit status."""
    parser = cli.make_parser('vit_jax.predict', __doc__)
    parser.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...)')
    parser.add_argument('--model', help='registered model name, e.g. ViT-B_16 (with a weights '
                        'file or URL)')
    parser.add_argument('--weights', help='weights file (.npz, .pth, .bin, .safetensors) or URL '
                        'with --model; a Hugging Face directory; or a published name (python -m '
                        'vit_jax.hub --list)')
    parser.add_argument('--workdir', help='a training run: model, weights and classes from it')
    parser.add_argument('--img_size', type=int, help="input size (default: the model's)")
    parser.add_argument('--classes', help='class names, one per line')
    parser.add_argument('--top', type=int, default=5, help='how many classes to print')
    parser.add_argument('--normalize', choices=tuple(NORMALIZATIONS),
                        help="input mean / std (default: the run's, or the model's registered)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.workdir or args.weights):
        parser.error('give --weights (with --model for a file or URL), or --workdir')
    for name in ('top', 'img_size'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name} must be 1 or more, got {getattr(args, name)}')
    try:
        loaded = inference.load(workdir=args.workdir, weights_source=args.weights,
                                model=args.model, img_size=args.img_size)
        model, variables, cfg = loaded.model, loaded.variables, dict(loaded.preprocessing)
        if not model.num_classes:
            raise VitJaxError(f'{args.weights} has no classifier head (no key ending in '
                              f'{" or ".join(inference.HEAD_BIASES)}); it holds features only')
        names = (class_names(model.num_classes, args.classes)
                 if args.classes or not loaded.class_names else loaded.class_names)
        if args.normalize:
            cfg = {**cfg, **NORMALIZATIONS[args.normalize]}
        batch = np.stack([preprocess(p, cfg, model.img_size) for p in args.images])
        probs = np.asarray(jax.nn.softmax(model.apply(variables, batch, train=False)))
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for path, p in zip(args.images, probs, strict=True):
        print(f'{path}:')
        for rank, i in enumerate(np.argsort(-p)[:args.top], 1):
            print(f'  {rank}. {names[i]} ({p[i]:.3f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
