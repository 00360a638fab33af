"""DHVT from scratch with the authors' DeiT-style recipe (ArieSeirack/DHVT `main.py` and
`run_code_*.sh`), as far as the trainer expresses it.

    python -m vit_jax.main --config=configs/dhvt.py:tiny_cifar_patch4,cifar100 --workdir=DIR

The argument is `MODEL,DATASET` (or `model=MODEL,dataset=DATASET`; default
tiny_cifar_patch4,cifar100): MODEL is `{tiny,small}_cifar_patch{4,2}`,
`{tiny,small}_domain_patch16`, `{tiny,small}_imagenet_patch16` (or a registered `dhvt_*` name);
the image size is the variant's (32 or 224). DATASET is one of `known.DATASETS`, a tfds name or
a folder.

Recipe: AdamW (betas 0.9/0.999, weight decay 0.05), no gradient clipping, base lr = lr x batch /
512 (lr 1e-3 on CIFAR and DomainNet as the authors' scripts, DeiT's 5e-4 otherwise; recompute
`base_lr` when changing `batch`), linear warm-up then cosine decay over 300 epochs, label
smoothing 0.1, stochastic depth 0.1, ImageNet mean/std input normalisation. CIFAR: random crop
with 4 px padding and flips; ImageNet: Inception crop (scale 0.08-1) and flips; then (the
authors' DeiT defaults, on every dataset but the quick `digits` check) RandAugment
rand-m9-mstd0.5-inc1 (bilinear where they use bicubic), random erasing 0.25 and repeated
augmentation (3 copies), mixup 0.8 / cutmix 1.0 and an EMA of the weights (0.99996); DeiT's
warm-up from 1e-6 and cosine floor of 1e-5, and at 224 px DeiT's evaluation (shorter side to
256, centre 224 crop: `pp.eval_crop_pct=0.875`; 32 px images are evaluated whole, as DeiT).
"""

import math

import ml_collections

from vit_jax.data import known

from . import common

EPOCHS = 300
# dataset -> global batch, lr before scaling by batch / 512, warm-up epochs, augmentation and its
# settings.
RECIPES = {
    'cifar100': dict(batch=512, lr=1e-3, warmup=5, pp=dict(augment='pad_crop', pad=4)),
    'cifar10': dict(batch=512, lr=1e-3, warmup=5, pp=dict(augment='pad_crop', pad=4)),
    'imagenet2012': dict(batch=1024, lr=5e-4, warmup=10,
                         pp=dict(augment='inception', area_min=0.08)),
    'digits': dict(batch=128, lr=1e-3, warmup=5, pp=dict(augment='pad_crop', pad=2, flip=False)),
}
OTHER_RECIPE = dict(batch=512, lr=1e-3, warmup=20, pp=dict(augment='inception', area_min=0.08))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='tiny_cifar_patch4', dataset='cifar100')
    c = common.start('dhvt', arg, drop_path_rate=0.1)
    recipe = RECIPES.get(c.dataset, OTHER_RECIPE)
    if c.dataset == 'digits':  # 8x8, upsampled to 16 px: 4x4 tokens of patch 4
        c.pp.crop = 16
    c.pp.test = known.dataset(c.dataset).test
    c.pp.update(recipe['pp'])
    c.pp.normalize = 'imagenet'
    if c.dataset != 'digits':
        common.deit_augment(c)
    c.batch = recipe['batch']
    c.batch_eval = 512
    steps_per_epoch = known.dataset(c.dataset).train_examples / c.batch
    c.total_steps = math.ceil(EPOCHS * steps_per_epoch)
    c.warmup_steps = math.ceil(recipe['warmup'] * steps_per_epoch)
    c.optimizer = 'adamw'
    c.base_lr = recipe['lr'] * c.batch / 512
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
