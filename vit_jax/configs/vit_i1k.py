"""ViT-S/16 and ViT-B/16 from scratch on ImageNet-1k: big_vision's plain ViT baseline (google-
research/big_vision `configs/vit_s16_i1k.py`; Beyer, Zhai, Kolesnikov, "Better plain ViT
baselines for ImageNet-1k", arXiv 2205.01580).

    python -m vit_jax.main --config=configs/vit_i1k.py:s16 --workdir=DIR --config.tfds_data_dir=D
    python -m vit_jax.main --config=configs/vit_i1k.py:b16,epochs=300 --workdir=DIR

The argument is `VARIANT,DATASET` plus `epochs=N` (or `variant=...,dataset=...,epochs=...`;
default s16,imagenet2012,epochs=90): VARIANT `s16` or `b16`, DATASET one of `known.DATASETS`
(`digits` for a quick check at 16 px), a tfds name or a folder.

Recipe (big_vision's values): batch 1024; Adam (betas 0.9 / 0.999, first moment in bfloat16)
with decoupled weight decay 1e-4 on the kernels, learning rate 1e-3, 10,000 linear warm-up steps
then cosine decay to 0, global-norm clipping at 1; 90 epochs (300 for the longer run) over
`train[:99%]` (the last 1 % is big_vision's minival), evaluation on `validation`; Inception crop
and flip, RandAugment 2 ops at magnitude 10 (timm's op set here, no magnitude noise), mixup with
alpha 0.2 on every batch, no label smoothing; global average pooling, fixed 2-D sine-cosine
position embeddings, a tanh pre-logits layer of the model's width (big_vision's
`rep_size=True`), a zero-initialised head; pixels scaled to [-1, 1]; evaluation resizes the
shorter side to 256 and takes the centre 224 crop.
"""

import math

import ml_collections

from vit_jax.config import base_config, model_config
from vit_jax.data import known
from vit_jax.errors import ConfigError

from . import common

VARIANTS = {'s16': 'ViT-S_16', 'b16': 'ViT-B_16'}
WARMUP_STEPS = 10_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `VARIANT[,DATASET][,epochs=N]` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, variant='s16', dataset='imagenet2012', epochs='90')
    if arg.variant not in VARIANTS or not arg.epochs.isdigit():
        raise ConfigError(f'configs/vit_i1k.py:{arg.variant},epochs={arg.epochs}: choose a '
                          f'variant out of {", ".join(VARIANTS)} and a whole number of epochs')
    c = base_config()
    c.model_name = VARIANTS[arg.variant]
    width = {'s16': 384, 'b16': 768}[arg.variant]
    c.model = model_config(c.model_name, classifier='gap', pos_embed='sincos2d',
                           representation_size=width)
    c.dataset = arg.dataset
    data = known.dataset(c.dataset)
    c.pp.train, num_train = data.train_split(holdout=True)
    c.pp.test = data.test
    c.pp.update(augment='inception', area_min=0.05, flip=True, normalize='minus_one_one',
                randaug_layers=2, randaug_magnitude=10, randaug_magnitude_std=0.0,
                crop=224, eval_crop_pct=0.875)
    c.batch = 1024
    c.batch_eval = 1024
    steps_per_epoch = num_train / c.batch
    c.total_steps = math.ceil(int(arg.epochs) * steps_per_epoch)
    c.warmup_steps = WARMUP_STEPS
    c.optimizer = 'adamw'
    c.b1, c.b2 = 0.9, 0.999
    c.optim_dtype = 'bfloat16'
    c.base_lr = 1e-3
    c.weight_decay = 1e-4
    c.decay_type = 'cosine'
    c.grad_norm_clip = 1.0
    c.label_smoothing = 0.0
    c.mixup_alpha, c.cutmix_alpha, c.mix_prob = 0.2, 0.0, 1.0
    if c.dataset == 'digits':  # a quick check: 8x8 digits upsampled to 16 px, 4x4 patches
        c.model.patch_size = 4
        c.pp.update(crop=16, augment='pad_crop', pad=2, flip=False, eval_crop_pct=1.0)
        c.batch, c.batch_eval = 128, 512
        c.total_steps = math.ceil(int(arg.epochs) * data.train_examples / c.batch)
        c.warmup_steps = c.total_steps // 10
        c.eval_every = c.fewshot_every = 100
    else:
        c.eval_every = math.ceil(5 * steps_per_epoch)
        # Few-shot accuracy every 10,000 steps as big_vision's i1k configs log it, from the
        # first 50,000 training images (about 50 per class).
        c.fewshot_every = 10_000
        c.fewshot_train = 'train[:50000]'
    c.checkpoint_every = c.eval_every
    c.progress_every = 50
    return c.lock()
