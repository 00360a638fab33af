"""The main job: a small ViT trained from scratch on the embedded handwritten digits.

    python -m vit_jax.main --config=configs/digits.py --workdir=runs/digits

1,797 real 8x8 digits from scikit-learn (offline); 1,437 train / 360 held-out test.
"""

import ml_collections

from vit_jax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    """The main job: ViT-digits on the embedded digits."""
    c = base_config()
    c.dataset = 'digits'
    # 16x16 input (the 8x8 digits upsampled), 4x4 patches: 16 tokens of width 64.
    c.model_name = 'ViT-digits'
    c.model = model_config(c.model_name)
    c.pp.crop = 16
    c.pp.augment = 'pad_crop'
    c.pp.pad = 2
    c.pp.flip = False  # digits are not mirror-symmetric
    c.batch = 128
    c.batch_eval = 512
    c.shuffle_buffer = 2_000
    c.total_steps = 1_200
    c.warmup_steps = 100
    c.optimizer = 'adamw'
    c.base_lr = 4e-3
    c.weight_decay = 0.05
    c.progress_every = 100
    c.eval_every = 400
    c.checkpoint_every = 400
    return c.lock()
