"""Fine-tuning the original ViT models, with the original recipe.

    python -m vit_jax.main --config=configs/vit.py:b16,cifar10 --workdir=DIR

The argument is `MODEL,DATASET`: MODEL is a short name (ti16, s16, s32, b8, b16, b32, l16, l32,
h14, optionally with `-gap-norep`; r_ti16, r26_s32, r26_b32, r50_b16, r50_l32 for the hybrids)
or any registered name; DATASET one of the presets below, a tfds name or a folder
`root/<split>/<class>/*.jpg`. Hyper-parameters as google-research/vision_transformer: batch 512
(8 accumulation steps), SGD momentum 0.9 kept in bfloat16, base lr 0.03 (0.01 for b16 on
cifar10), 500 warm-up steps then cosine decay, clipping at global norm 1, 384 px inception
crops and flips. Start from published weights with `--config.pretrained=PATH` (e.g. the
ImageNet-21k `ViT-B_16.npz`); the head starts from zeros, the position embedding is resized.
"""

import ml_collections

from vit_jax.config import base_config, model_config
from vit_jax.errors import ConfigError
from vit_jax.models import list_models

# Splits and step counts of the original presets (and a tiny one for the embedded digits).
DATASETS = {
    'cifar10': dict(total_steps=10_000, train='train[:98%]', test='test'),
    'cifar100': dict(total_steps=10_000, train='train[:98%]', test='test'),
    'imagenet2012': dict(total_steps=20_000, train='train[:99%]', test='validation'),
    'oxford_iiit_pet': dict(total_steps=500, train='train[:90%]', test='test'),
}


# The original config names of the hybrids (vit_jax/configs/models.py).
HYBRIDS = {'r_ti16': 'R+ViT-Ti_16', 'r26_s32': 'R26+ViT-S_32', 'r26_b32': 'R26+ViT-B_32',
           'r50_b16': 'R50+ViT-B_16', 'r50_l32': 'R50+ViT-L_32'}


def model_name(short: str) -> str:
    """`b16` -> `ViT-B_16`, `ti16-gap-norep` -> `ViT-Ti_16-gap-norep`, `r50_b16` ->
    `R50+ViT-B_16`; registered names pass."""
    if short in list_models():
        return short
    if short in HYBRIDS:
        return HYBRIDS[short]
    base, _, suffix = short.partition('-')
    size = base.rstrip('0123456789')
    name = f'ViT-{size.capitalize() if size == "ti" else size.upper()}_{base[len(size):]}'
    name += f'-{suffix}' if suffix else ''
    if name not in list_models():
        raise ConfigError(f'unknown model {short!r}; use a short name like b16 or a registered '
                          f'name: {", ".join(list_models("ViT-*"))}')
    return name


def get_config(arg: str = 'b16,cifar10') -> ml_collections.ConfigDict:
    model, _, dataset = arg.partition(',')
    c = base_config()
    c.model_name = model_name(model)
    c.model = model_config(c.model_name)
    c.dataset = dataset or 'cifar10'
    preset = DATASETS.get(c.dataset, dict(total_steps=10_000, train='train', test='test'))
    c.total_steps = preset['total_steps']
    c.pp.train, c.pp.test = preset['train'], preset['test']
    c.pp.crop = 384
    c.batch = 512
    c.batch_eval = 512
    c.accum_steps = 8
    c.optim_dtype = 'bfloat16'  # the original keeps SGD momentum in bfloat16
    c.base_lr = 0.01 if (c.model_name, c.dataset) == ('ViT-B_16', 'cifar10') else 0.03
    return c.lock()
