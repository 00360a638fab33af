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

from . import common

# Stochastic depth from scratch and when fine-tuning, per width.
DROP_PATH = {'tiny': (0.2, 0.1), 'small': (0.3, 0.2), 'base': (0.5, 0.2), 'large': (0.5, 0.2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET[,ft]` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='tiny', dataset='cifar10', ft=False)
    c = common.start('swin', arg)
    c.model.drop_path_rate = DROP_PATH[c.model_name.split('_')[1]][arg.ft]
    c.batch = 1024
    common.paper_recipe(c, ft=arg.ft, grad_norm_clip=5.0,
                        scratch=dict(epochs=300, warmup_epochs=20, base_lr=1e-3,
                                     weight_decay=0.05),
                        fine_tune=dict(epochs=30, warmup_epochs=5, base_lr=4e-5,
                                       weight_decay=1e-8))
    return c.lock()
