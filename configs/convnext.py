"""ConvNeXt: the paper's ImageNet-1k recipe from scratch, or fine-tuning loaded weights.

    python -m vit_jax.main --config=configs/convnext.py:tiny,cifar10 --workdir=DIR
    python -m vit_jax.main --config=configs/convnext.py:base,cifar10,ft --workdir=DIR \\
        --config.pretrained=convnext_base_22k_224.pth

The argument is `SIZE,DATASET[,ft]`: SIZE is tiny, small, base, large, xlarge or any
registered convnext name; DATASET a preset below, a tfds name or a folder
`root/<split>/<class>/*.jpg`.

From scratch (Liu et al., 2022, Table 5): AdamW (0.9, 0.999), batch 4096, lr 4e-3, weight
decay 0.05 (not on biases, norms and layer scales), 300 epochs with 20 of linear warm-up then
cosine decay, no gradient clipping, label smoothing 0.1, stochastic depth 0.1 / 0.4 / 0.5 / 0.5
/ 0.5 (tiny / small / base / large / xlarge; the paper trains xlarge only on ImageNet-22k),
layer scale 1e-6. Augmentation is the pipeline's (inception crop + flip); RandAugment, mixup,
cutmix, random erasing and the EMA are not there yet.

`ft` fine-tunes weights loaded from `config.pretrained` (a timm or original Facebook
checkpoint, read by `vit_jax.weights.load`), as the paper's 22k->1k fine-tune: batch 512, lr
5e-5, weight decay 1e-8, 30 epochs, no warm-up, stochastic depth 0.0 / 0.1 / 0.2 / 0.3 / 0.4
(the paper's layer-wise lr decay 0.8 is not implemented).
"""

import ml_collections

from vit_jax.config import adamw_recipe, base_config, model_config
from vit_jax.errors import ConfigError
from vit_jax.models import list_models

# Stochastic depth from scratch and when fine-tuning, per size.
DROP_PATH = {'tiny': (0.1, 0.0), 'small': (0.4, 0.1), 'base': (0.5, 0.2), 'large': (0.5, 0.3),
             'xlarge': (0.5, 0.4)}
# Splits and training-set sizes (to turn epochs into steps).
DATASETS = {
    'cifar10': dict(train='train[:98%]', test='test', num_train=49_000),
    'cifar100': dict(train='train[:98%]', test='test', num_train=49_000),
    'imagenet2012': dict(train='train[:99%]', test='validation', num_train=1_268_355),
    'oxford_iiit_pet': dict(train='train[:90%]', test='test', num_train=3_312),
}


def model_name(size: str) -> str:
    """`tiny` -> `convnext_tiny`; registered convnext names pass."""
    name = size if size.startswith('convnext_') else f'convnext_{size}'
    if name not in list_models('convnext_*'):
        raise ConfigError(f'unknown ConvNeXt size {size!r}; use one of {", ".join(DROP_PATH)} '
                          f'or a registered name: {", ".join(list_models("convnext_*"))}')
    return name


def get_config(arg: str = 'tiny,cifar10') -> ml_collections.ConfigDict:
    size, dataset, *mode = (arg.split(',') + [''])[:max(2, arg.count(',') + 1)]
    if mode not in ([], ['ft']):
        raise ConfigError(f'configs/convnext.py takes SIZE,DATASET[,ft], got {arg!r}')
    finetune = mode == ['ft']
    c = base_config()
    c.model_name = model_name(size)
    c.model = model_config(c.model_name,
                           drop_path_rate=DROP_PATH[c.model_name.split('_')[1]][finetune])
    c.dataset = dataset or 'cifar10'
    preset = DATASETS.get(c.dataset, dict(train='train', test='test', num_train=50_000))
    c.pp.train, c.pp.test = preset['train'], preset['test']
    c.pp.crop = 224
    c.pp.normalize = 'imagenet'  # the paper's (and the timm weights') mean / std
    c.batch = 512 if finetune else 4096
    c.batch_eval = 512
    epochs, warmup_epochs = (30, 0) if finetune else (300, 20)
    adamw_recipe(c, num_train=preset['num_train'], epochs=epochs, warmup_epochs=warmup_epochs,
                 base_lr=5e-5 if finetune else 4e-3, weight_decay=1e-8 if finetune else 0.05,
                 grad_norm_clip=0.0)
    if finetune:  # weights loaded with vit_jax.weights.load before training: set the path
        c.pretrained = ''
    return c.lock()
