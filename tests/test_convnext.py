"""ConvNeXt: logits equal to timm's, both checkpoint layouts, exact parameter counts, the
registry's preprocessing, bad sizes, and training through `vit_jax.main`."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference

import vit_jax
from vit_jax import main as cli
from vit_jax import weights
from vit_jax.errors import ModelError
from vit_jax.models import convnext, get_spec
from vit_jax.train.workdir import Workdir

# A reduced model: 64 px -> stages of 16, 8, 4 and 2 px.
SMALL = dict(dims=(8, 16, 24, 32), depths=(1, 1, 2, 1))
SIZE = 64


def reference(timm, num_classes=5):
    """A timm ConvNeXt with random parameters (layer scales included), its numpy state dict and
    test images."""
    torch.manual_seed(0)
    model = timm.create_model('convnext_tiny', pretrained=False, num_classes=num_classes,
                              **SMALL)
    state = torch_reference.randomize(model)
    images = np.random.RandomState(1).randn(2, SIZE, SIZE, 3).astype(np.float32)
    return model, state, images


def own_model(num_classes=5, **overrides):
    return vit_jax.create_model('convnext_tiny', num_classes=num_classes, img_size=SIZE,
                                **{**SMALL, **overrides})


@functools.cache
def forward():
    """The jitted eval-mode forward pass of the reduced model (compiled once)."""
    return jax.jit(own_model().apply)


def test_logits_equal_timm(timm):
    torch_model, state, images = reference(timm)
    variables = weights.load(own_model(), state, strict=True)
    expected = torch_reference.logits(torch_model, images)
    logits = np.asarray(forward()(variables, images))
    diff = np.abs(logits - expected).max()
    print(f'convnext: max abs diff {diff:.2e} (logits up to {np.abs(expected).max():.1f})')
    assert diff <= 1e-4
    assert np.abs(expected).max() > 1.0


def facebook_layout(state):
    """timm's ConvNeXt keys -> the original facebookresearch/ConvNeXt checkpoint's keys."""
    def rename(key):
        key = re.sub(r'^stem\.', 'downsample_layers.0.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.', key)
        key = re.sub(r'^stages\.(\d+)\.blocks\.', r'stages.\1.', key)
        key = key.replace('conv_dw', 'dwconv').replace('mlp.fc', 'pwconv')
        return key.replace('head.norm.', 'norm.').replace('head.fc.', 'head.')
    return {'model': {rename(k): v for k, v in state.items()}}


def test_original_facebook_checkpoint_loads(timm, tmp_path):
    torch_model, state, images = reference(timm)
    original = facebook_layout(state)
    assert {'downsample_layers.1.1.weight', 'stages.2.1.pwconv2.weight', 'stages.0.0.gamma',
            'norm.weight', 'head.weight'} <= set(original['model'])
    path = tmp_path / 'convnext.pth'
    torch.save({'model': {k: torch.from_numpy(v) for k, v in original['model'].items()}}, path)
    variables = weights.load(own_model(), path, strict=True)
    np.testing.assert_allclose(forward()(variables, images),
                               torch_reference.logits(torch_model, images), atol=1e-4)


def test_registry_keeps_timm_preprocessing():
    cfg = get_spec('convnext_base').pretrained_cfg
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == \
        ((224, 224, 3), 0.875, 'bicubic')
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert get_spec('convnext_tiny').pretrained_cfg['crop_pct'] == 0.95  # in12k_ft_in1k


def test_layer_scale_starts_at_1e_6():
    shapes = weights.model_shapes(own_model())
    assert shapes['params/stages_2/blocks_1/gamma'].shape == (24,)
    block = convnext.ConvNeXtBlock()
    init = jax.jit(lambda x: block.init(jax.random.key(0), x, deterministic=True))
    params = init(jnp.zeros((1, 4, 4, 8)))['params']
    np.testing.assert_array_equal(params['gamma'], np.full(8, 1e-6, np.float32))


@pytest.mark.parametrize('size, message', [
    (200, r'img_size=200 does not fit patch_size=4 and 3 2x downsamplings .* use '
          r'img_size=192 or 224$'),
    (20, r'use img_size=32$'),
])
def test_size_the_downsampling_cannot_divide_names_sizes_that_work(size, message):
    with pytest.raises(ModelError, match=message):
        vit_jax.create_model('convnext_tiny', img_size=size)


@pytest.mark.slow  # about 40 s of CPU: compiling the train and eval steps
def test_trains_through_main_on_digits(tmp_path, digits_data_dir, config_spec):
    workdir = str(tmp_path)
    code = cli.main([
        '--config=' + config_spec('convnext.py:tiny,digits'), f'--workdir={workdir}',
        f'--config.tfds_data_dir={digits_data_dir}',
        # 16 px, a 2x2 stem and one 2x downsampling: stages of 8 and 4 px.
        '--config.pp.crop=16', '--config.pp.augment=pad_crop', '--config.pp.pad=2',
        '--config.pp.flip=false', '--config.model.patch_size=2', '--config.model.dims=(16,32)',
        '--config.model.depths=(1,1)', '--config.batch=64', '--config.batch_eval=360',
        '--config.total_steps=120', '--config.warmup_steps=3', '--config.base_lr=4e-3',
        '--config.label_smoothing=0', '--config.progress_every=20', '--config.eval_every=0',
        '--config.checkpoint_every=0'])
    assert code == 0
    losses = [r['train_loss'] for r in Workdir(workdir).read_metrics() if 'train_loss' in r]
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.05, losses
