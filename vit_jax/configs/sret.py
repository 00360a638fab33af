"""SReT trained from scratch with the DeiT recipe the SReT paper uses.

    python -m vit_jax.main --config=configs/sret.py:tiny,imagenet2012 --workdir=DIR

The argument is `MODEL,DATASET` (or `model=MODEL,dataset=DATASET`; default tiny,imagenet2012):
MODEL is `tiny` (SReT_T), `light_tiny` (SReT_LT), `small` (SReT_S), optionally with `_wo_slice`
(and the registered suffixes, e.g. `_distill`), or a registered SReT name; DATASET one of
`known.DATASETS`, a tfds name or a folder `root/<split>/<class>/*.jpg`.

Recipe (DeiT, as the authors train SReT): AdamW (0.9, 0.999), lr 5e-4 x batch / 512 = 1e-3 at
batch 1024, weight decay 0.05 (not on biases, norms, coefficients or the position embedding), 5
warm-up epochs then cosine decay, 300 epochs, no gradient clipping, label smoothing 0.1,
stochastic depth 0.1, random-resized crops (area 0.08-1) with flips at the variant's size (224
px; the `finetune_384` / `_512` variants at theirs), RandAugment
rand-m9-mstd0.5-inc1 (bilinear where DeiT uses bicubic), random erasing 0.25, repeated
augmentation (3 copies), mixup 0.8 / cutmix 1.0, an EMA of the weights (0.99996), ImageNet
mean/std normalisation (all but the last off for the quick `digits` check). The authors' README
reports better results with lr 1e-3 x batch / 512 and 30 warm-up epochs (`--config.base_lr=2e-3
--config.warmup_steps=37_530`).

DeiT's schedule ends: warm-up from 1e-6, a 1e-5 floor of the cosine decay; and its evaluation:
the shorter side resized to crop / 0.875 (256 for 224), the centre crop cut out
(`pp.eval_crop_pct=0.875`). The `_distill` variants learn from a teacher with
`--config.distill.type=soft --config.teacher.model=NAME --config.teacher.weights=FILE`
(docs/recipes.md).
"""

import ml_collections

from vit_jax.config import adamw_recipe
from vit_jax.data import known

from . import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='tiny', dataset='imagenet2012')
    c = common.start('sret', arg, drop_path_rate=0.1)
    c.pp.train, c.pp.test = 'train', known.dataset(c.dataset).test
    c.pp.augment = 'inception'
    c.pp.area_min = 0.08
    c.pp.normalize = 'imagenet'
    c.batch = 128 if c.dataset == 'digits' else 1024
    c.batch_eval = 1000
    adamw_recipe(c, num_train=known.dataset(c.dataset).train_examples, epochs=300, warmup_epochs=5,
                 base_lr=5e-4 * c.batch / 512, weight_decay=0.05, grad_norm_clip=0.0)
    c.warmup_lr, c.min_lr = 1e-6, 1e-5  # DeiT's warm-up start and cosine floor
    c.shuffle_buffer = 50_000
    c.progress_every = 100
    c.eval_every = c.checkpoint_every = 5_000
    if c.dataset == 'digits':  # a quick check: 8x8 digits upsampled, shifted, never mirrored
        c.pp.crop, c.pp.augment, c.pp.pad, c.pp.flip = 32, 'pad_crop', 4, False
        c.batch_eval, c.shuffle_buffer = 360, 2_000
        c.total_steps, c.warmup_steps = 600, 50
        c.eval_every = c.checkpoint_every = 200
    else:
        common.deit_augment(c)
        c.pp.eval_crop_pct = 0.875  # DeiT's evaluation: resize to crop / 0.875, centre crop
    return c.lock()
