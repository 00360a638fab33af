"""Swin Transformer: logits equal to timm's (with and without shifted windows), both checkpoint
layouts, exact parameter counts, the registry's preprocessing, bad sizes, and training through
`vit_jax.main`."""

import functools

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
from vit_jax.models import get_spec, swin
from vit_jax.train.workdir import Workdir

TIMM_NAME = 'swin_tiny_patch4_window7_224'

# Reduced models: 64 px, window 4 -> stages of 16, 8 (shifted windows, masked), 4, 2 (one window,
# no shift); 32 px, window 8 -> every stage no larger than its window (no shift anywhere).
CASES = {
    'shifted': dict(img_size=64, window_size=4, embed_dim=16, depths=(2, 2, 1, 1),
                    num_heads=(2, 2, 4, 4)),
    'unshifted': dict(img_size=32, window_size=8, embed_dim=16, depths=(2, 1, 1, 1),
                      num_heads=(1, 2, 2, 4)),
}


def reference(timm, case, num_classes=5):
    """A timm Swin with random parameters, its numpy state dict, and matching test images."""
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes,
                              **CASES[case])
    state = torch_reference.randomize(model)
    size = CASES[case]['img_size']
    images = np.random.RandomState(1).randn(2, size, size, 3).astype(np.float32)
    return model, state, images


def own_model(case, num_classes=5, **overrides):
    return vit_jax.create_model(TIMM_NAME, num_classes=num_classes,
                                **{**CASES[case], **overrides})


@functools.cache
def forward(case, attn_impl='fused'):
    """The jitted eval-mode forward pass of the reduced model `case` (compiled once)."""
    return jax.jit(own_model(case, attn_impl=attn_impl).apply)


@pytest.mark.parametrize('case', sorted(CASES))
def test_logits_equal_timm(timm, case):
    torch_model, state, images = reference(timm, case)
    model = own_model(case)
    shifts = [s for _, _, s in model.check_size(model.img_size)]
    assert any(shifts) == (case == 'shifted'), shifts
    variables = weights.load(model, state, strict=True)
    expected = torch_reference.logits(torch_model, images)
    logits = np.asarray(forward(case)(variables, images))
    diff = np.abs(logits - expected).max()
    print(f'swin {case}: max abs diff {diff:.2e} (logits up to {np.abs(expected).max():.1f})')
    assert diff <= 1e-4
    assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero numbers


def microsoft_layout(state):
    """timm's Swin keys -> the original microsoft/Swin-Transformer checkpoint's keys."""
    def rename(key):
        parts = key.split('.')
        if parts[0] == 'layers' and parts[2] == 'downsample':  # end of the stage before
            parts[1] = str(int(parts[1]) - 1)
        return '.'.join(parts).replace('head.fc.', 'head.')
    return {'model': {rename(k): v for k, v in state.items()}}


def test_original_microsoft_checkpoint_loads(timm):
    torch_model, state, images = reference(timm, 'shifted')
    original = microsoft_layout(state)
    assert 'layers.0.downsample.reduction.weight' in original['model']
    assert 'head.weight' in original['model']
    variables = weights.load(own_model('shifted'), original, strict=True)
    logits = forward('shifted')(variables, images)
    np.testing.assert_allclose(logits, torch_reference.logits(torch_model, images), atol=1e-4)


def test_checkpoint_file_loads(timm, tmp_path):
    torch_model, state, images = reference(timm, 'unshifted')
    path = tmp_path / 'swin.pth'
    torch.save({'model': {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    variables = weights.load(own_model('unshifted'), path, strict=True)
    logits = forward('unshifted')(variables, images)
    np.testing.assert_allclose(logits, torch_reference.logits(torch_model, images), atol=1e-4)


def test_registry_keeps_timm_preprocessing():
    cfg = get_spec('swin_base_patch4_window12_384').pretrained_cfg
    assert cfg['input_size'] == (384, 384, 3) and cfg['crop_pct'] == 1.0
    cfg = get_spec('swin_tiny_patch4_window7_224').pretrained_cfg
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == \
        ((224, 224, 3), 0.9, 'bicubic')
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert vit_jax.create_model('swin_large_patch4_window12_384').window_size == 12


def test_shifted_window_mask_separates_regions():
    mask = swin.shifted_window_mask(8, 4, 2)  # 4 windows of 16 tokens
    assert mask.shape == (4, 16, 16)
    assert mask[0].all()  # the top-left window holds one region
    assert mask[3].sum() == 4 * 4 * 4  # bottom-right: four 2x2 regions, each sees itself only
    np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))


def test_fused_and_explicit_attention_agree(timm):
    _, state, images = reference(timm, 'shifted')
    variables = weights.load(own_model('shifted'), state)
    np.testing.assert_allclose(forward('shifted')(variables, images),
                               forward('shifted', 'explicit')(variables, images), atol=1e-5)


@pytest.mark.parametrize('size, message', [
    (200, r'img_size=200 does not fit .* window_size=7 .* use img_size=224$'),
    (300, r'use img_size=224 or 448$'),
])
def test_size_the_windows_cannot_divide_names_sizes_that_work(size, message):
    with pytest.raises(ModelError, match=message):
        vit_jax.create_model(TIMM_NAME, img_size=size)


def test_wrong_image_size_at_call_time():
    model = own_model('unshifted')
    with pytest.raises(ModelError, match='use img_size=32'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 36, 36, 3)))


@pytest.mark.slow  # about 50 s of CPU: compiling the train and eval steps
def test_trains_through_main_on_digits(tmp_path, digits_data_dir, config_spec):
    workdir = str(tmp_path)
    code = cli.main([
        '--config=' + config_spec('swin.py:tiny,digits'), f'--workdir={workdir}',
        f'--config.tfds_data_dir={digits_data_dir}',
        # 16 px, patch 2, window 4: stages of 8 (shifted windows) and 4 (one window) px.
        '--config.pp.crop=16', '--config.pp.augment=pad_crop', '--config.pp.pad=2',
        '--config.pp.flip=false', '--config.model.patch_size=2', '--config.model.window_size=4',
        '--config.model.embed_dim=16', '--config.model.depths=(2,2)',
        '--config.model.num_heads=(2,4)', '--config.model.drop_path_rate=0.1',
        '--config.batch=64', '--config.batch_eval=360', '--config.total_steps=120',
        '--config.warmup_steps=3', '--config.base_lr=4e-3', '--config.label_smoothing=0',
        '--config.progress_every=20', '--config.eval_every=0', '--config.checkpoint_every=0'])
    assert code == 0
    losses = [r['train_loss'] for r in Workdir(workdir).read_metrics() if 'train_loss' in r]
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.05, losses
