"""ConvNeXt: the paper's ImageNet-1k recipe from scratch, or fine-tuning loaded weights.

    python -m vit_jax.main --config=configs/convnext.py:tiny,cifar10 --workdir=DIR
    python -m vit_jax.main --config=configs/convnext.py:base,cifar10,ft --workdir=DIR \\
        --config.pretrained=convnext_base_22k_224.pth

The argument is `MODEL,DATASET[,ft]` (or `model=MODEL,dataset=DATASET,ft=true`; default
tiny,cifar10): MODEL is tiny, small, base, large, xlarge or a registered convnext name; DATASET
one of `known.DATASETS`, a tfds name or a folder `root/<split>/<class>/*.jpg`.

From scratch (Liu et al., 2022, Table 5): AdamW (0.9, 0.999), batch 4096, lr 4e-3, weight decay
0.05 (not on biases, norms and layer scales), 300 epochs with 20 of linear warm-up then cosine
decay, no gradient clipping, label smoothing 0.1, stochastic depth 0.1 / 0.4 / 0.5 / 0.5 / 0.5
(tiny / small / base / large / xlarge; the paper trains xlarge only on ImageNet-22k), layer
scale 1e-6. Augmentation is the pipeline's (inception crop + flip); RandAugment, mixup, cutmix,
random erasing and the EMA are not there yet.

`ft` fine-tunes weights loaded from `--config.pretrained=PATH`, which it requires (a timm or
original Facebook checkpoint, read by `vit_jax.weights.load`), as the paper's 22k->1k fine-tune:
batch 512, lr 5e-5, weight decay 1e-8, 30 epochs, no warm-up, stochastic depth 0.0 / 0.1 / 0.2 /
0.3 / 0.4 (the paper's layer-wise lr decay 0.8 is not implemented).
"""

import ml_collections

from . import common

# Stochastic depth from scratch and when fine-tuning, per size.
DROP_PATH = {'tiny': (0.1, 0.0), 'small': (0.4, 0.1), 'base': (0.5, 0.2), 'large': (0.5, 0.3),
             'xlarge': (0.5, 0.4)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `MODEL,DATASET[,ft]` (or by key); see the module docstring."""
    arg = common.parse_arg(arg, model='tiny', dataset='cifar10', ft=False)
    c = common.start('convnext', arg)
    c.model.drop_path_rate = DROP_PATH[c.model_name.split('_')[1]][arg.ft]
    c.batch = 512 if arg.ft else 4096
    common.paper_recipe(c, ft=arg.ft, grad_norm_clip=0.0,
                        scratch=dict(epochs=300, warmup_epochs=20, base_lr=4e-3,
                                     weight_decay=0.05),
                        fine_tune=dict(epochs=30, warmup_epochs=0, base_lr=5e-5,
                                       weight_decay=1e-8))
    return c.lock()
