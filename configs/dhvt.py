"""DHVT from scratch with the authors' DeiT-style recipe (ArieSeirack/DHVT `main.py` and
`run_code_*.sh`), as far as the trainer expresses it.

    python -m vit_jax.main --config=configs/dhvt.py:tiny_cifar_patch4,cifar100 --workdir=DIR

The argument is `VARIANT,DATASET`: VARIANT is `{tiny,small}_cifar_patch{4,2}`,
`{tiny,small}_domain_patch16`, `{tiny,small}_imagenet_patch16` (or a registered `dhvt_*` name);
the image size is the variant's (32 or 224). DATASET is a preset below, a tfds name or a folder.

Recipe: AdamW (betas 0.9/0.999, weight decay 0.05), no gradient clipping, base lr = lr x
batch / 512 (lr 1e-3 on CIFAR and DomainNet as the authors' scripts, DeiT's 5e-4 otherwise;
recompute `base_lr` when changing `batch`), linear warm-up then cosine decay over 300 epochs,
label smoothing 0.1, stochastic depth 0.1, ImageNet mean/std input normalisation. CIFAR: random
crop with 4 px padding and flips; ImageNet: Inception crop (scale 0.08-1) and flips; then (the
authors' DeiT defaults, on every dataset but the quick `digits` check) RandAugment
rand-m9-mstd0.5-inc1 (bilinear where they use bicubic), random erasing 0.25 and repeated
augmentation (3 copies), mixup 0.8 / cutmix 1.0 and an EMA of the weights (0.99996); DeiT's
warm-up from 1e-6 and cosine floor of 1e-5, and at 224 px DeiT's evaluation (shorter side to
256, centre 224 crop: `pp.eval_crop_pct=0.875`; 32 px images are evaluated whole, as DeiT).
"""

import math

import ml_collections

from vit_jax.config import base_config, model_config
from vit_jax.errors import ConfigError
from vit_jax.models import list_models

EPOCHS = 300
# dataset -> training examples, global batch, lr before scaling by batch / 512, warm-up epochs,
# augmentation and its settings.
DATASETS = {
    'cifar100': dict(examples=50_000, batch=512, lr=1e-3, warmup=5, test='test',
                     pp=dict(augment='pad_crop', pad=4)),
    'cifar10': dict(examples=50_000, batch=512, lr=1e-3, warmup=5, test='test',
                    pp=dict(augment='pad_crop', pad=4)),
    'imagenet2012': dict(examples=1_281_167, batch=1024, lr=5e-4, warmup=10, test='validation',
                         pp=dict(augment='inception', area_min=0.08)),
    'digits': dict(examples=1_437, batch=128, lr=1e-3, warmup=5, test='test',
                   pp=dict(augment='pad_crop', pad=2, flip=False)),
}
# DeiT's RandAugment (rand-m9-mstd0.5-inc1), random erasing and repeated augmentation.
DEIT_AUGMENT = dict(randaug_layers=2, randaug_magnitude=9, randaug_magnitude_std=0.5,
                    erase_prob=0.25, repeated_aug=3)
DEFAULT = dict(examples=100_000, batch=512, lr=1e-3, warmup=20, test='test',
               pp=dict(augment='inception', area_min=0.08))


def model_name(variant: str) -> str:
    """`tiny_cifar_patch4` -> `dhvt_tiny_cifar_patch4`; registered names pass unchanged."""
    for name in (variant, f'dhvt_{variant}'):
        if name in list_models('dhvt_*'):
            return name
    raise ConfigError(f'unknown DHVT variant {variant!r}; choose one of '
                      f'{", ".join(n.removeprefix("dhvt_") for n in list_models("dhvt_*"))}')


def get_config(arg: str = 'tiny_cifar_patch4,cifar100') -> ml_collections.ConfigDict:
    variant, _, dataset = arg.partition(',')
    c = base_config()
    c.model_name = model_name(variant)
    c.model = model_config(c.model_name, drop_path_rate=0.1)
    c.dataset = dataset or 'cifar100'
    preset = DATASETS.get(c.dataset, DEFAULT)
    # Digits are 8x8: upsampled to 16 px (4x4 tokens of patch 4); otherwise the variant's size.
    c.pp.crop = 16 if c.dataset == 'digits' else 32 if '_cifar_' in c.model_name else 224
    c.pp.test = preset['test']
    c.pp.update(preset['pp'])
    c.pp.normalize = 'imagenet'
    if c.dataset != 'digits':
        c.pp.update(DEIT_AUGMENT)
        c.mixup_alpha, c.cutmix_alpha, c.ema_decay = 0.8, 1.0, 0.99996
    c.batch = preset['batch']
    c.batch_eval = 512
    steps_per_epoch = preset['examples'] / c.batch
    c.total_steps = math.ceil(EPOCHS * steps_per_epoch)
    c.warmup_steps = math.ceil(preset['warmup'] * steps_per_epoch)
    c.optimizer = 'adamw'
    c.base_lr = preset['lr'] * c.batch / 512
    c.weight_decay = 0.05
    c.decay_type = 'cosine'
    c.warmup_lr, c.min_lr = 1e-6, 1e-5
    if c.pp.crop > 32:
        c.pp.eval_crop_pct = 0.875
    c.grad_norm_clip = 0.0
    c.label_smoothing = 0.1
    c.eval_every = math.ceil(10 * steps_per_epoch)
    c.checkpoint_every = c.eval_every
    c.progress_every = 100
    return c.lock()
