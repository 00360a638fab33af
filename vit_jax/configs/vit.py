"""Fine-tuning the original ViT models, with the original recipe.

    python -m vit_jax.main --config=configs/vit.py:b16,cifar10 --workdir=DIR

The argument is `MODEL,DATASET` (or `model=MODEL,dataset=DATASET`; default b16,cifar10): MODEL
is a short name (ti16, s16, s32, b8, b16, b32, l16, l32, h14, optionally with `-gap-norep`;
big_vision's so400m14, g14, G14, e14; r_ti16, r26_s32, r26_b32, r50_b16, r50_l32 for the
hybrids) or a registered name; DATASET one of `known.DATASETS`, a tfds name or a folder
`root/<split>/<class>/*.jpg`.

Hyper-parameters as google-research/vision_transformer: batch 512 (8 accumulation steps), SGD
momentum 0.9 kept in bfloat16, base lr 0.03 (0.01 for b16 on cifar10), 500 warm-up steps then
cosine decay, clipping at global norm 1, 384 px inception crops and flips. Start from published
weights with `--config.pretrained=PATH` (e.g. `imagenet21k/ViT-B_16`, the published name of the
original ImageNet-21k checkpoint, or its file); the head starts from zeros, the position
embedding is resized.
"""

import ml_collections

from vit_jax.config import base_config, model_config
from vit_jax.data import known

from . import common

# Training steps of the original presets.
TOTAL_STEPS = {'cifar10': 10_000, 'cifar100': 10_000, 'imagenet2012': 20_000,
               'oxford_iiit_pet': 500}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='b16', dataset='cifar10')
    c = base_config()
    c.model_name = common.model_name('vit', arg.model)
    c.model = model_config(c.model_name)
    c.dataset = arg.dataset
    c.total_steps = TOTAL_STEPS.get(c.dataset, 10_000)
    c.pp.train = known.dataset(c.dataset).train_split(holdout=True)[0]
    c.pp.test = known.dataset(c.dataset).test
    c.pp.crop = 384
    c.batch = 512
    c.batch_eval = 512
    c.accum_steps = 8
    c.optim_dtype = 'bfloat16'  # the original keeps SGD momentum in bfloat16
    c.base_lr = 0.01 if (c.model_name, c.dataset) == ('ViT-B_16', 'cifar10') else 0.03
    return c.lock()
