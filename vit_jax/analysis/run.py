"""All four analyses on one model: load it (from a training workdir or a weights file), compute,
write PNGs and `analysis.json`.

    python -m vit_jax.analysis --workdir=runs/digits --out=runs/digits/analysis
    python -m vit_jax.analysis --model=ViT-B_16 --weights=ViT-B_16.npz --out=DIR
    python -m vit_jax.analysis --model=ViT-S_16 --weights=w.npz --option patch_size=32 --out=DIR

Files written to `--out`: `attention_distance.png`, `attention_<image>.png` (one per image:
attention rollout and the last block's per-head class-token attention, overlaid),
`position_similarity.png`, `patch_filters.png` (not for hybrids, whose patch embedding reads
ResNet features) and `analysis.json` (the numbers).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vit_jax import cli, inference, models, storage
from vit_jax.analysis import attention, embeddings
from vit_jax.errors import ModelError, VitJaxError
from vit_jax.normalization import NORMALIZATIONS
from vit_jax.normalization import normalize as normalize_pixels
from vit_jax.predict import read_image

SAMPLE_IMAGES = ('astronaut', 'chelsea', 'coffee')


def sample_images(names: Sequence[str], size: int) -> dict[str, np.ndarray]:
    """Images `[size, size, 3]` in [0, 1], centre-cropped and resized: each name is a
    scikit-image sample (`astronaut`, `chelsea`, `coffee`, ...) or an image file (local,
    `gs://...` or `s3://...`)."""
    from PIL import Image

    out = {}
    for name in names:
        if storage.is_remote(name) or os.path.isfile(name):
            image = read_image(name)
            key = os.path.splitext(os.path.basename(name))[0]
        else:
            import skimage.data

            if not hasattr(skimage.data, name):
                raise ModelError(f'{name!r} is neither an image file nor a scikit-image sample; '
                                 f'try one of {", ".join(SAMPLE_IMAGES)}')
            image, key = getattr(skimage.data, name)(), name
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(image[top:top + side, left:left + side, :3].astype(np.uint8))
        out[key] = np.asarray(crop.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return out


def normalize(images: np.ndarray, model_name: str, normalization: str | None = None,
              ) -> np.ndarray:
    """Images in [0, 1] -> the model's input normalisation: `normalization` (a `pp.normalize`
    name, as a training run's config has) or else the model's registered mean and std."""
    cfg = (NORMALIZATIONS[normalization] if normalization
           else models.get_spec(model_name).pretrained_cfg)
    return normalize_pixels(np.asarray(images, np.float32) * 255, cfg['mean'], cfg['std'])


def analyze(model: nn.Module, variables: Mapping[str, Any], images: Mapping[str, np.ndarray],
            out_dir: str | os.PathLike | None = None, *, model_name: str = 'ViT-B_16',
            normalization: str | None = None, num_components: int = 28) -> dict[str, Any]:
    """Runs the four analyses; with `out_dir` (a local folder, `gs://...` or `s3://...`),
    writes the PNGs and `analysis.json` there.

    `images`: name -> `[size, size, 3]` in [0, 1] (`size` = the model's `img_size`); they are
    normalised as `normalization` (a `pp.normalize` name) or else as `model_name`'s registered
    preprocessing. Returns the numbers: mean attention distance `[layers][heads]` (pixels), the
    position-embedding similarity `[rows][cols][rows][cols]` and the filter components'
    explained variance.
    """
    from vit_jax.analysis import plots

    grid, patch_size, prefix = attention.token_layout(model)
    batch = normalize(np.stack(list(images.values())), model_name, normalization)
    attn = attention.attention_weights(model, variables, batch)
    distance = attention.mean_attention_distance(attn, grid, patch_size, prefix)
    maps = attention.attention_maps(attn, grid, prefix)
    kernel = np.asarray(variables['params']['embedding']['kernel'])
    results: dict[str, Any] = {
        'grid': list(grid), 'patch_size': patch_size, 'images': list(images),
        'mean_attention_distance': np.round(distance, 3).tolist(),
    }
    components = None
    if kernel.shape[2] == 3:
        components, explained = embeddings.filter_components(kernel, num_components)
        results['patch_filter_explained_variance'] = np.round(explained, 5).tolist()
    else:  # a hybrid: the patch embedding reads ResNet features
        results['patch_filter_explained_variance'] = (
            f'the patch embedding reads {kernel.shape[2]} feature channels of the ResNet stem, '
            f'not RGB pixels: no filters to draw')
    try:
        similarity = embeddings.position_similarity(
            embeddings.position_embedding(model, variables['params']), grid)
        results['position_similarity'] = np.round(similarity, 4).tolist()
    except ModelError as e:  # pos_embed='none'
        similarity, results['position_similarity'] = None, str(e)
    if out_dir is None:
        return results

    figures = {'attention_distance': plots.attention_distance(
        distance, max_distance=float(np.hypot(*grid) * patch_size))}
    for i, (name, image) in enumerate(images.items()):
        overlays = {'rollout': maps['rollout'][i]}
        overlays.update({f'last block, head {h + 1}': m
                         for h, m in enumerate(maps['last_layer'][i][:6])})
        figures[f'attention_{name}'] = plots.attention_overlay(image, overlays, title=name)
    if similarity is not None:
        figures['position_similarity'] = plots.position_similarity(similarity)
    if components is not None:
        figures['patch_filters'] = plots.filters(components, explained)
    out = storage.path(out_dir)
    with storage.reporting(f'cannot write {os.fspath(out_dir)}', out_dir, '--out'):
        if not storage.is_remote(out):
            out.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            plots.save(fig, out / f'{name}.png')
        storage.write_atomic(out / 'analysis.json', json.dumps(results))
    for fig in figures.values():
        plots.close(fig)
    return results


def _parse_option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition('=')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a string such as pos_embed=sincos2d


def _normalization(loaded: inference.Loaded) -> str | None:
    """The `pp.normalize` name of a run's inputs, of a Hugging Face model's, or None for a
    registered model (its `pretrained_cfg`)."""
    if loaded.config is not None:
        return loaded.config.pp.get('normalize', 'minus_one_one')
    if loaded.name is None:
        return next(key for key, value in NORMALIZATIONS.items()
                    if tuple(value['mean']) == tuple(loaded.preprocessing['mean']))
    return None


def main(argv: list[str] | None = None) -> int:
    """Writes the analysis plots and numbers of a run or weights (the CLI); returns the status."""
    parser = cli.make_parser('vit_jax.analysis', __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--workdir', help='a training workdir (config.json + checkpoints)')
    source.add_argument('--weights', help='a weights file or URL (with --model), a Hugging Face '
                        'directory, or a published name (python -m vit_jax.hub --list)')
    parser.add_argument('--model', help='registered model name (with a weights file or URL)')
    parser.add_argument('--img_size', type=int, help="input size (default: the model's)")
    parser.add_argument('--num_classes', type=int,
                        help='head size for weights without a head (default: none)')
    parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                        help='a model option (--weights), e.g. --option patch_size=32')
    parser.add_argument('--step', type=int, help='checkpoint step (--workdir; default latest)')
    parser.add_argument('--images', default=','.join(SAMPLE_IMAGES),
                        help='comma-separated scikit-image sample names or image files')
    parser.add_argument('--out', required=True, help='folder for the PNGs and analysis.json')
    args = parser.parse_args(argv)
    try:
        out = storage.path(args.out)  # an unknown scheme fails before the model loads
        options = dict(_parse_option(o) for o in args.option)
        if args.num_classes is not None:
            options['num_classes'] = args.num_classes
        loaded = inference.load(workdir=args.workdir, weights_source=args.weights,
                                model=args.model, step=args.step, img_size=args.img_size,
                                options=options)
        model, variables = loaded.model, loaded.variables
        name = loaded.name or type(model).__name__
        normalization = _normalization(loaded)
        images = sample_images(args.images.split(','), model.img_size)
        results = analyze(model, variables, images, args.out, model_name=name,
                          normalization=normalization)
        with storage.reporting(f'cannot list {args.out}', args.out, '--out'):
            written = sorted(p.name for p in out.iterdir())
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    distance = np.asarray(results['mean_attention_distance'])
    print(f'{name} on {jax.devices()[0].platform}: mean attention distance per block '
          f'(pixels, mean over heads) {np.round(distance.mean(1), 1).tolist()}; '
          f'wrote {written} to {args.out}')
    return 0
