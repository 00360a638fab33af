"""Published weights by name: one table of the checkpoints vit_jax loads, and how a name or a URL
becomes a local file (`resolve`, which `weights.load` reads every source through).

    model, variables = vit_jax.pretrained('ViT-B_16')                 # the model's default
    model, variables = vit_jax.pretrained('imagenet21k/ViT-B_16', num_classes=10)  # fresh head
    variables = vit_jax.weights.load(model, 'imagenet21k/ViT-B_16')   # a name, URL or path
    --config.pretrained=imagenet21k/ViT-B_16                          # the same for training
    python -m vit_jax.hub --list                                      # this table

A name is a `CATALOGUE` key; a registered model's name stands for its first entry there (its
default, as timm's untagged names). Files are downloaded once into the cache and checked on
every use (`vit_jax.download`). The DHVT authors have not released weights, so DHVT has none.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from vit_jax import download, storage
from vit_jax.errors import ModelError


@dataclasses.dataclass(frozen=True)
class Published:
    """A published checkpoint: `url` holds it; `create_model(model, num_classes=num_classes,
    img_size=img_size, **options)` is what it loads into; `sha256` is the digest its publisher
    states (None where none does); `filename` names the cached file where the URL ends in no
    file name."""

    name: str
    url: str
    model: str
    num_classes: int
    img_size: int = 224
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str | None = None
    filename: str | None = None


VIT_MODELS = 'gs://vit_models'
TIMM_HUB = 'https://huggingface.co/timm/{}/resolve/main/model.safetensors'
GOOGLE_DRIVE = 'https://drive.usercontent.google.com/download?id={}&export=download&confirm=t'
IMAGENET21K, IMAGENET22K = 21843, 21841  # the original ViT/BiT head; Microsoft's and Facebook's

# AugReg (Steiner et al., "How to train your ViT?"): ImageNet-21k checkpoints fine-tuned on
# ImageNet-1k at 224 px, as timm's `*.augreg_in21k_ft_in1k` reads them; the ViTs' defaults.
_AUGREG_224 = {
    'ViT-Ti_16': 'Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-'
                 'lr_0.03-res_224',
    'ViT-S_16': 'S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-'
                'lr_0.03-res_224',
    'ViT-S_32': 'S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-'
                'lr_0.03-res_224',
    'ViT-B_16': 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-'
                'lr_0.01-res_224',
    'ViT-B_32': 'B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-'
                'steps_20k-lr_0.03-res_224',
    'ViT-B_8': 'B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-'
               'lr_0.01-res_224',
    'ViT-L_16': 'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-'
                'lr_0.01-res_224',
}
# The original paper's checkpoints (google-research/vision_transformer, gs://vit_models): fine-tuned
# on ImageNet-1k at 384 px (unless named -224) from ImageNet-21k, whose checkpoints also hold a
# pre-logits layer that the original fine-tuning code drops, as loading here does; ImageNet-1k
# with SAM (Chen et al.) at 224 px. File name: (model, image size).
_ORIGINAL_TUNED = {'ViT-B_16-224': ('ViT-B_16', 224), 'ViT-L_16-224': ('ViT-L_16', 224),
                   'ViT-B_16': ('ViT-B_16', 384), 'ViT-B_32': ('ViT-B_32', 384),
                   'ViT-L_16': ('ViT-L_16', 384), 'ViT-L_32': ('ViT-L_32', 384),
                   'R50+ViT-B_16': ('R50+ViT-B_16', 384)}
_ORIGINAL_21K = ('ViT-B_8', 'ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-H_14',
                 'R50+ViT-B_16', 'R26+ViT-B_32', 'R50+ViT-L_32')
_SAM = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32')
# The vision_transformer README's recommended AugReg checkpoints: ImageNet-21k, and fine-tuned on
# ImageNet-1k at 384 px with the learning rate named.
_AUGREG = {
    'ViT-L_16': ('L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0', 'lr_0.01'),
    'ViT-B_16': ('B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0', 'lr_0.03'),
    'ViT-S_16': ('S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', 'lr_0.03'),
    'R50+ViT-L_32': ('R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1', 'lr_0.01'),
    'R26+ViT-S_32': ('R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', 'lr_0.01'),
    'ViT-Ti_16': ('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', 'lr_0.03'),
    'ViT-B_32': ('B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', 'lr_0.01'),
    'ViT-S_32': ('S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0', 'lr_0.01'),
    'R+ViT-Ti_16': ('R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', 'lr_0.03'),
}
# BiT (google-research/big_transfer): BiT-M on ImageNet-21k, BiT-S on ImageNet-1k.
_BIT = {'M': (IMAGENET21K, ('R50x1', 'R50x3', 'R101x1', 'R101x3', 'R152x2', 'R152x4')),
        'S': (1000, ('R50x1', 'R50x3', 'R101x1', 'R101x3', 'R152x4'))}
# timm's weights on the Hugging Face hub, `timm/<model>.<tag>`: (model, tag, classes); a model's
# first is the tag its registry entry names (timm's default).
_TIMM = (
    ('swin_tiny_patch4_window7_224', 'ms_in1k', 1000),
    ('swin_small_patch4_window7_224', 'ms_in22k_ft_in1k', 1000),
    ('swin_base_patch4_window7_224', 'ms_in22k_ft_in1k', 1000),
    ('swin_base_patch4_window12_384', 'ms_in22k_ft_in1k', 1000),
    ('swin_large_patch4_window7_224', 'ms_in22k_ft_in1k', 1000),
    ('swin_large_patch4_window12_384', 'ms_in22k_ft_in1k', 1000),
    ('swin_tiny_patch4_window7_224', 'ms_in22k', IMAGENET22K),
    ('swin_small_patch4_window7_224', 'ms_in22k', IMAGENET22K),
    ('swin_base_patch4_window7_224', 'ms_in22k', IMAGENET22K),
    ('swin_base_patch4_window12_384', 'ms_in22k', IMAGENET22K),
    ('swin_large_patch4_window7_224', 'ms_in22k', IMAGENET22K),
    ('swin_large_patch4_window12_384', 'ms_in22k', IMAGENET22K),
    ('convnext_tiny', 'in12k_ft_in1k', 1000),
    ('convnext_small', 'in12k_ft_in1k', 1000),
    ('convnext_base', 'fb_in22k_ft_in1k', 1000),
    ('convnext_large', 'fb_in22k_ft_in1k', 1000),
    ('convnext_xlarge', 'fb_in22k_ft_in1k', 1000),
    ('convnext_tiny', 'fb_in22k', IMAGENET22K),
    ('convnext_small', 'fb_in22k', IMAGENET22K),
    ('convnext_base', 'fb_in22k', IMAGENET22K),
    ('convnext_large', 'fb_in22k', IMAGENET22K),
    ('convnext_xlarge', 'fb_in22k', IMAGENET22K),
    ('deit_tiny_distilled_patch16_224', 'fb_in1k', 1000),
    ('deit_small_distilled_patch16_224', 'fb_in1k', 1000),
    ('deit_base_distilled_patch16_224', 'fb_in1k', 1000),
)
# Hugging Face `transformers` checkpoints (LayerNorm eps 1e-12 and exact GELU, as
# `weights.hf_model` reads their config.json).
_HF = {'google/vit-base-patch16-224': ('ViT-B_16', 1000, 224)}
# SReT's release (szq0214/SReT README, last-epoch weights on Google Drive): model -> file id;
# their ⋇ (without slice) is our `_wo_slice`.
_SRET = {
    'SReT_T_wo_slice': '1wHM7NRSkz-WykCSES17xFV56h_m5RMXj',
    'SReT_T': '1FDTpva6y-I_bKmyVmLFDn_3BlDq3dwni',
    'SReT_LT_wo_slice': '1EXwfiMMa1UVQ_tmY6YQJ-Se0b3bW5NpC',
    'SReT_LT': '1uSWvoVLHmOH6rNYiXSxD_rlN5dSBvEm3',
    'SReT_S_wo_slice': '1vlsxJieKhfnw-F6xFiwczvXBuk7ugXxm',
    'SReT_S': '1y6F_bCgS1sagm7pxjAtuSPUB5HoNb8Ed',
    'SReT_T_wo_slice_distill': '1P1qK-j1Cac5le8-DNUFBbjmIpRThuiVp',
    'SReT_T_distill': '1xzG4VQyQyxWJfQTcGCE-fuMuK3BwPCjK',
    'SReT_LT_wo_slice_distill': '1FDqkfkw5nZEuTcBmiBKg3lvPJOPQWS6i',
    'SReT_LT_distill': '1l6u0q4kwli5czEyo4TeJANtqsulh-J5G',
    'SReT_T_wo_slice_distill_finetune_384': '11mWAktu6LrNa0Qt61WJGA0eTWoKYD1Be',
    'SReT_S_wo_slice_finetune_384': '1z5whJpXbbtFdjLpS1pCPvKcJhVnYCeo-',
    'SReT_S_wo_slice_distill_finetune_512': '1AZXIGMiGboI-nkoKuPnHnhDlBwZumuiB',
}
_SRET_SIZES = {'SReT_T_wo_slice_distill_finetune_384': 384, 'SReT_S_wo_slice_finetune_384': 384,
               'SReT_S_wo_slice_distill_finetune_512': 512}


def _entries() -> Iterator[Published]:
    """Every published checkpoint; a model's first is its default."""
    def vit(path: str, model: str, classes: int, size: int = 224) -> Published:
        return Published(path, f'{VIT_MODELS}/{path}.npz', model, classes, size)

    for model, stem in _AUGREG_224.items():
        yield vit(f'augreg/{stem}', model, 1000)
    for file, (model, size) in _ORIGINAL_TUNED.items():
        yield vit(f'imagenet21k+imagenet2012/{file}', model, 1000, size)
    for model, (stem, lr) in _AUGREG.items():
        yield vit(f'augreg/{stem}--imagenet2012-steps_20k-{lr}-res_384', model, 1000, 384)
    for model in _ORIGINAL_21K:
        yield vit(f'imagenet21k/{model}', model, IMAGENET21K)
    for model, (stem, _) in _AUGREG.items():
        yield vit(f'augreg/{stem}', model, IMAGENET21K)
    for model in _SAM:
        yield vit(f'sam/{model}', model, 1000)
    for kind, (classes, sizes) in _BIT.items():
        for size in sizes:
            yield Published(f'BiT-{kind}-{size}', f'gs://bit_models/BiT-{kind}-{size}.npz',
                            f'BiT-{size}', classes)
    for model, tag, classes in _TIMM:
        size = 384 if model.endswith('384') else 224
        yield Published(f'{model}.{tag}', TIMM_HUB.format(f'{model}.{tag}'), model, classes, size)
    for name, (model, classes, size) in _HF.items():
        yield Published(name, f'https://huggingface.co/{name}/resolve/main/model.safetensors',
                        model, classes, size, {'norm_eps': 1e-12, 'act_layer': 'gelu'})
    for model, file_id in _SRET.items():
        yield Published(f'sret/{model}', GOOGLE_DRIVE.format(file_id), model, 1000,
                        _SRET_SIZES.get(model, 224), filename=f'{model}.pth')


CATALOGUE: dict[str, Published] = {entry.name: entry for entry in _entries()}


def find(name: str) -> Published:
    """The checkpoint `name`, or a registered model's default (its first entry); an unknown
    name is a one-line `ModelError` with the close matches."""
    entry = _lookup(name)
    if entry is None:
        raise ModelError(f'no published weights named {name!r}; {_suggest(name)}')
    return entry


def fetch(entry: Published) -> str:
    """The local copy of `entry`'s file, downloaded into the cache on first use."""
    return download.fetch(entry.url, sha256=entry.sha256, filename=entry.filename)


def resolve(source: str | os.PathLike) -> str:
    """The local path `source` stands for: a local path as it is; a URL (`gs://`, `s3://`,
    `http(s)://`; an object in a store checked for changes on each use) or a published name
    fetched into the cache. A name close to published ones is
    a one-line `ModelError`; anything else is returned for the reader to find missing."""
    text = os.fspath(source)
    if storage.is_remote(text):
        return download.fetch(text, check_source=True)
    if os.path.exists(text):
        return text
    entry = _lookup(text)
    if entry is not None:
        return fetch(entry)
    if _close(text):
        raise ModelError(f'{text!r} is neither a file nor a published checkpoint; '
                         f'{_suggest(text)}')
    return text


def _lookup(name: str) -> Published | None:
    if name in CATALOGUE:
        return CATALOGUE[name]
    return next((e for e in CATALOGUE.values() if e.model == name), None)


def _close(name: str) -> list[str]:
    names = [*CATALOGUE, *{e.model for e in CATALOGUE.values()}]
    return difflib.get_close_matches(name, names, n=3, cutoff=0.75)


def _suggest(name: str) -> str:
    close = _close(name)
    hint = f'did you mean {", ".join(close)}? ' if close else ''
    return f'{hint}python -m vit_jax.hub --list prints them'


def table() -> str:
    """The catalogue as text: one line per checkpoint, `*` marking each model's default."""
    rows = [('', 'name', 'model', 'classes', 'px', 'source')]
    defaults = {find(e.model).name for e in CATALOGUE.values()}
    rows += [('*' if e.name in defaults else '', e.name, e.model, str(e.num_classes),
              str(e.img_size), e.url) for e in CATALOGUE.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + '  ' + r[-1]
             for r in rows]
    return '\n'.join(lines + ['* the default of its model: vit_jax.pretrained(MODEL)'])
