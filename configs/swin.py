"""Swin Transformer: the paper's ImageNet-1k recipe from scratch, or fine-tuning loaded weights.

    python -m vit_jax.main --config=configs/swin.py:tiny,cifar10 --workdir=DIR
    python -m vit_jax.main --config=configs/swin.py:base384,cifar10,ft --workdir=DIR \\
        --config.pretrained=swin_base_patch4_window12_384_22kto1k.pth

The argument is `SIZE,DATASET[,ft]`: SIZE is tiny, small, base, large (224 px, window 7),
base384 or large384 (384 px, window 12) or any registered swin name; DATASET a preset below, a
tfds name or a folder `root/<split>/<class>/*.jpg`.

From scratch (Liu et al., 2021, and microsoft/Swin-Transformer's configs): AdamW
(0.9, 0.999), batch 1024, lr 1e-3 (5e-4 per 512 images), weight decay 0.05 (not on biases,
norms and relative position bias tables), 300 epochs with 20 of linear warm-up then cosine
decay, gradient clipping at 5, label smoothing 0.1, stochastic depth 0.2 / 0.3 / 0.5 / 0.5
(tiny / small / base / large; the paper trains large only on ImageNet-22k). Augmentation is
the pipeline's (inception crop + flip); RandAugment, mixup and cutmix are not there yet.

`ft` fine-tunes weights loaded from `config.pretrained` (a timm or original Microsoft
checkpoint, read by `vit_jax.weights.load`): 30 epochs, 5 of warm-up, lr 4e-5 at batch 1024,
weight decay 1e-8, stochastic depth 0.1 (tiny) or 0.2 (the 22k->1k fine-tune configs).
"""

import ml_collections

from vit_jax.config import adamw_recipe, base_config, model_config
from vit_jax.errors import ConfigError
from vit_jax.models import list_models

SIZES = {
    'tiny': 'swin_tiny_patch4_window7_224',
    'small': 'swin_small_patch4_window7_224',
    'base': 'swin_base_patch4_window7_224',
    'large': 'swin_large_patch4_window7_224',
    'base384': 'swin_base_patch4_window12_384',
    'large384': 'swin_large_patch4_window12_384',
}
# Stochastic depth from scratch and when fine-tuning, per width.
DROP_PATH = {'tiny': (0.2, 0.1), 'small': (0.3, 0.2), 'base': (0.5, 0.2), 'large': (0.5, 0.2)}
# Splits and training-set sizes (to turn epochs into steps).
DATASETS = {
    'cifar10': dict(train='train[:98%]', test='test', num_train=49_000),
    'cifar100': dict(train='train[:98%]', test='test', num_train=49_000),
    'imagenet2012': dict(train='train[:99%]', test='validation', num_train=1_268_355),
    'oxford_iiit_pet': dict(train='train[:90%]', test='test', num_train=3_312),
}


def model_name(size: str) -> str:
    """`tiny` -> `swin_tiny_patch4_window7_224`; registered swin names pass."""
    if size in SIZES:
        return SIZES[size]
    if size in list_models('swin_*'):
        return size
    raise ConfigError(f'unknown Swin size {size!r}; use one of {", ".join(SIZES)} or a '
                      f'registered name: {", ".join(list_models("swin_*"))}')


def get_config(arg: str = 'tiny,cifar10') -> ml_collections.ConfigDict:
    size, dataset, *mode = (arg.split(',') + [''])[:max(2, arg.count(',') + 1)]
    if mode not in ([], ['ft']):
        raise ConfigError(f'configs/swin.py takes SIZE,DATASET[,ft], got {arg!r}')
    finetune = mode == ['ft']
    c = base_config()
    c.model_name = model_name(size)
    width = next(w for w in DROP_PATH if w in c.model_name)
    c.model = model_config(c.model_name, drop_path_rate=DROP_PATH[width][finetune])
    c.dataset = dataset or 'cifar10'
    preset = DATASETS.get(c.dataset, dict(train='train', test='test', num_train=50_000))
    c.pp.train, c.pp.test = preset['train'], preset['test']
    c.pp.crop = 384 if c.model_name.endswith('384') else 224
    c.pp.normalize = 'imagenet'  # the paper's (and the timm weights') mean / std
    c.batch = 1024
    c.batch_eval = 512
    epochs, warmup_epochs = (30, 5) if finetune else (300, 20)
    adamw_recipe(c, num_train=preset['num_train'], epochs=epochs, warmup_epochs=warmup_epochs,
                 base_lr=4e-5 if finetune else 1e-3, weight_decay=1e-8 if finetune else 0.05,
                 grad_norm_clip=5.0)
    if finetune:  # weights loaded with vit_jax.weights.load before training: set the path
        c.pretrained = ''
    return c.lock()
