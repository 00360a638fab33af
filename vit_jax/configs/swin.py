"""Swin Transformer: the paper's ImageNet-1k recipe from scratch, or fine-tuning loaded weights.

    python -m vit_jax.main --config=configs/swin.py:tiny,cifar10 --workdir=DIR
    python -m vit_jax.main --config=configs/swin.py:base384,cifar10,ft --workdir=DIR \\
        --config.pretrained=swin_base_patch4_window12_384_22kto1k.pth

The argument is `MODEL,DATASET[,ft]` (or `model=MODEL,dataset=DATASET,ft=true`; default
tiny,cifar10): MODEL is tiny, small, base, large (224 px, window 7), base384 or large384 (384
px, window 12) or a registered swin name; DATASET one of `known.DATASETS`, a tfds name or a
folder `root/<split>/<class>/*.jpg`.

From scratch (Liu et al., 2021, and microsoft/Swin-Transformer's configs): AdamW (0.9, 0.999),
batch 1024, lr 1e-3 (5e-4 per 512 images), weight decay 0.05 (not on biases, norms and relative
position bias tables), 300 epochs with 20 of linear warm-up then cosine decay, gradient clipping
at 5, label smoothing 0.1, stochastic depth 0.2 / 0.3 / 0.5 / 0.5 (tiny / small / base / large;
the paper trains large only on ImageNet-22k). Augmentation is the pipeline's (inception crop +
flip); RandAugment, mixup and cutmix are not there yet.

`ft` fine-tunes weights loaded from `--config.pretrained=PATH`, which it requires (a timm or
original Microsoft checkpoint, read by `vit_jax.weights.load`): 30 epochs, 5 of warm-up, lr 4e-5
at batch 1024, weight decay 1e-8, stochastic depth 0.1 (tiny) or 0.2 (the 22k->1k fine-tune
configs).
"""

import ml_collections

from vit_jax.config import adamw_recipe, base_config, model_config, require_pretrained
from vit_jax.data import known

from . import common

# Stochastic depth from scratch and when fine-tuning, per width.
DROP_PATH = {'tiny': (0.2, 0.1), 'small': (0.3, 0.2), 'base': (0.5, 0.2), 'large': (0.5, 0.2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET[,ft]` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='tiny', dataset='cifar10', ft=False)
    c = base_config()
    c.model_name = common.model_name('swin', arg.model)
    width = c.model_name.split('_')[1]
    c.model = model_config(c.model_name, drop_path_rate=DROP_PATH[width][arg.ft])
    c.dataset = arg.dataset
    dataset = known.dataset(c.dataset)
    c.pp.train, num_train = dataset.train_split(holdout=True)
    c.pp.test = dataset.test
    c.pp.crop = 384 if c.model_name.endswith('384') else 224
    c.pp.normalize = 'imagenet'  # the paper's (and the timm weights') mean / std
    c.batch = 1024
    c.batch_eval = 512
    epochs, warmup_epochs = (30, 5) if arg.ft else (300, 20)
    adamw_recipe(c, num_train=num_train, epochs=epochs, warmup_epochs=warmup_epochs,
                 base_lr=4e-5 if arg.ft else 1e-3, weight_decay=1e-8 if arg.ft else 0.05,
                 grad_norm_clip=5.0)
    if arg.ft:
        require_pretrained(c)
    return c.lock()
