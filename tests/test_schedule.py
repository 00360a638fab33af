"""DeiT's schedule ends (warm-up from `warmup_lr`, a `min_lr` floor) and its resize-then-crop
evaluation (`pp.eval_crop_pct`), as the DHVT and SReT configs set them."""

import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax import config as config_lib
from vit_jax.train import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('decay_type', ['cosine', 'linear'])
def test_schedule_warms_up_from_warmup_lr_and_ends_at_min_lr(decay_type):
    config = config_lib.base_config()
    config.update(base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=110,
                  decay_type=decay_type)
    lr = optim.learning_rate_schedule(config)
    np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(110)],
                               [1e-6, (1e-6 + 1e-3) / 2, 1e-3, 1e-5], rtol=1e-5)
    middle = {'cosine': 1e-5 + (1e-3 - 1e-5) / 2, 'linear': (1e-3 + 1e-5) / 2}[decay_type]
    np.testing.assert_allclose(lr(60), middle, rtol=1e-5)


@pytest.mark.parametrize('arg, eval_crop_pct', [('tiny,imagenet2012', 0.875),
                                                ('tiny,digits', 1.0)])
def test_sret_config_uses_deit_schedule_ends_and_evaluation(arg, eval_crop_pct):
    c = config_lib.load_config(os.path.join(REPO, 'vit_jax', 'configs', 'sret.py') + ':' + arg)
    assert (c.warmup_lr, c.min_lr, c.pp.eval_crop_pct) == (1e-6, 1e-5, eval_crop_pct)


@pytest.mark.parametrize('arg, eval_crop_pct', [('tiny_imagenet_patch16,imagenet2012', 0.875),
                                                ('tiny_cifar_patch4,cifar100', 1.0)])
def test_dhvt_config_uses_deit_schedule_ends_and_evaluation(arg, eval_crop_pct):
    c = config_lib.load_config(os.path.join(REPO, 'vit_jax', 'configs', 'dhvt.py') + ':' + arg)
    assert (c.warmup_lr, c.min_lr, c.pp.eval_crop_pct) == (1e-6, 1e-5, eval_crop_pct)


def test_eval_resizes_the_shorter_side_then_cuts_out_the_centre():
    from vit_jax.data import pipeline

    # 200 x 300 image, red channel = the column (a ramp), green = the row.
    rows, cols = np.mgrid[0:200, 0:300]
    image = np.stack([cols * 255 // 299, rows * 255 // 199, np.zeros_like(rows)], -1)
    encoded = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(encoded, format='PNG')
    pp = ml_collections.ConfigDict(dict(crop=224, eval_crop_pct=0.875, normalize='minus_one_one'))
    out = pipeline._eval_example({'image': encoded.getvalue(), 'label': 3}, pp)
    pixels = (np.asarray(out['image']) + 1) * 127.5
    assert pixels.shape == (224, 224, 3)
    # Shorter side 200 -> 256 (x 1.28): 256 x 384, centre 224 x 224 from row 16, column 80.
    scale = 200 / 256
    for out_row, out_col in [(0, 0), (223, 223), (112, 50)]:
        src_col = (80 + out_col + 0.5) * scale - 0.5
        src_row = (16 + out_row + 0.5) * scale - 0.5
        np.testing.assert_allclose(pixels[out_row, out_col, :2],
                                   [src_col * 255 / 299, src_row * 255 / 199], atol=1.5)
