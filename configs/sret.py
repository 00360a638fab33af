"""SReT trained from scratch with the DeiT recipe the SReT paper uses.

    python -m vit_jax.main --config=configs/sret.py:tiny,imagenet2012 --workdir=DIR

The argument is `VARIANT,DATASET`: VARIANT is `tiny` (SReT_T), `light_tiny` (SReT_LT),
`small` (SReT_S), optionally with `_wo_slice`, or any registered SReT name; DATASET one of the
presets below, a tfds name or a folder `root/<split>/<class>/*.jpg`.

Recipe (DeiT, as the authors train SReT): AdamW (0.9, 0.999), lr 5e-4 x batch / 512 = 1e-3 at
batch 1024, weight decay 0.05 (not on biases, norms, coefficients or the position embedding),
5 warm-up epochs then cosine decay, 300 epochs, no gradient clipping, label smoothing 0.1,
stochastic depth 0.1, random-resized crops (area 0.08-1) with flips at 224 px, RandAugment
rand-m9-mstd0.5-inc1 (bilinear where DeiT uses bicubic), random erasing 0.25, repeated
augmentation (3 copies), mixup 0.8 / cutmix 1.0, an EMA of the weights (0.99996), ImageNet
mean/std normalisation (all but the last off for the quick `digits` check). The authors'
README reports better results with lr 1e-3 x batch / 512 and 30 warm-up epochs
(`--config.base_lr=2e-3 --config.warmup_steps=37_530`).

DeiT's schedule ends: warm-up from 1e-6, a 1e-5 floor of the cosine decay; and its evaluation
at 224 px: the shorter side resized to 256, the centre 224 cut out (`pp.eval_crop_pct=0.875`).
Not expressible yet: distillation from a teacher (the `_distill` variants' soft-label loss).
"""

import ml_collections

from vit_jax.config import base_config, model_config
from vit_jax.errors import ConfigError
from vit_jax.models import list_models

VARIANTS = {'tiny': 'SReT_T', 'light_tiny': 'SReT_LT', 'small': 'SReT_S'}
IMAGENET_TRAIN = 1_281_167
# 300 epochs, 5 of warm-up, at batch 1024; digits: the embedded offline set, a quick check.
DATASETS = {
    'imagenet2012': dict(total_steps=300 * IMAGENET_TRAIN // 1024,
                         warmup_steps=5 * IMAGENET_TRAIN // 1024, train='train',
                         test='validation', crop=224, batch=1024),
    'cifar100': dict(total_steps=300 * 50_000 // 1024, warmup_steps=5 * 50_000 // 1024,
                     train='train', test='test', crop=224, batch=1024),
    'digits': dict(total_steps=600, warmup_steps=50, train='train', test='test', crop=32,
                   batch=128),
}


def model_name(variant: str) -> str:
    """`tiny` -> `SReT_T`, `small_wo_slice` -> `SReT_S_wo_slice`; registered names pass."""
    if variant in list_models('SReT*'):
        return variant
    base, _, rest = variant.partition('_wo_slice')
    name = VARIANTS.get(base, '') + ('_wo_slice' if '_wo_slice' in variant else '') + rest
    if base not in VARIANTS or name not in list_models():
        raise ConfigError(f'unknown SReT variant {variant!r}; use {", ".join(VARIANTS)} '
                          f'(optionally with _wo_slice) or a registered name: '
                          f'{", ".join(list_models("SReT*"))}')
    return name


def get_config(arg: str = 'tiny,imagenet2012') -> ml_collections.ConfigDict:
    variant, _, dataset = arg.partition(',')
    c = base_config()
    c.model_name = model_name(variant)
    c.model = model_config(c.model_name, drop_path_rate=0.1)
    c.dataset = dataset or 'imagenet2012'
    preset = DATASETS.get(c.dataset, DATASETS['imagenet2012'])
    c.total_steps, c.warmup_steps = preset['total_steps'], preset['warmup_steps']
    c.pp.train, c.pp.test, c.pp.crop = preset['train'], preset['test'], preset['crop']
    c.pp.augment = 'inception'
    c.pp.area_min = 0.08
    c.pp.normalize = 'imagenet'
    if c.dataset == 'digits':  # 8x8 digits upsampled: shifted, never mirrored
        c.pp.augment, c.pp.pad, c.pp.flip = 'pad_crop', 4, False
    else:  # DeiT's RandAugment, random erasing and repeated augmentation
        c.pp.update(randaug_layers=2, randaug_magnitude=9, randaug_magnitude_std=0.5,
                    erase_prob=0.25, repeated_aug=3)
        c.mixup_alpha, c.cutmix_alpha, c.ema_decay = 0.8, 1.0, 0.99996
    c.batch = preset['batch']
    c.batch_eval = 1000 if c.dataset != 'digits' else 360
    c.optimizer = 'adamw'
    c.base_lr = 5e-4 * c.batch / 512
    c.b1, c.b2 = 0.9, 0.999
    c.weight_decay = 0.05
    c.decay_type = 'cosine'
    c.warmup_lr, c.min_lr = 1e-6, 1e-5
    c.grad_norm_clip = 0.0
    c.label_smoothing = 0.1
    if c.dataset != 'digits':
        c.pp.eval_crop_pct = 0.875
    c.shuffle_buffer = 50_000 if c.dataset != 'digits' else 2_000
    c.progress_every = 100
    c.eval_every = 5_000 if c.dataset != 'digits' else 200
    c.checkpoint_every = 5_000 if c.dataset != 'digits' else 200
    return c.lock()
