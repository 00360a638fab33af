"""DHVT: exact parameter counts, the authors' logits from their state dicts and checkpoint files,
BatchNorm statistics (PyTorch's momentum; updated by a short training run through the command
line and kept in its checkpoints), bad input."""

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import REFERENCE

import vit_jax
from vit_jax import config as config_lib
from vit_jax import main, tree, weights
from vit_jax.errors import ConfigError, ModelError
from vit_jax.models.dhvt import DHVT
from vit_jax.train import optim, step
from vit_jax.train.workdir import Workdir


def fixture_path(seed):
    return os.path.join(REFERENCE, f'dhvt_seed{seed}.npz')


def read_fixture(seed):
    with np.load(fixture_path(seed)) as f:
        config = json.loads(str(f['config']))
        state_dict = {k.removeprefix('sd/'): f[k] for k in f.files if k.startswith('sd/')}
        return config, state_dict, f['input'], f['logits']


def fixture_model(config):
    assert config['family'] == 'dhvt'
    return DHVT(**{k: v for k, v in config.items() if k not in ('family', 'seed')})


def eval_logits(model, variables, images):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


def test_pretrained_cfg_is_the_authors_preprocessing():
    cfg = vit_jax.models.get_spec('dhvt_tiny_cifar_patch4').pretrained_cfg
    assert cfg['input_size'] == (32, 32, 3) and cfg['mean'] == (0.485, 0.456, 0.406)
    assert vit_jax.models.get_spec('dhvt_small_imagenet_patch16').pretrained_cfg['input_size'] == \
        (224, 224, 3)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_authors_state_dict_reproduces_their_logits(seed):
    config, state_dict, images, expected = read_fixture(seed)
    model = fixture_model(config)
    variables = weights.load(model, state_dict, strict=True)
    logits = eval_logits(model, variables, images)
    diff = np.abs(logits - expected).max()
    print(f'dhvt_seed{seed}: max abs diff {diff:.3g}')
    assert diff <= 1e-4


def test_authors_training_checkpoint_file_loads(tmp_path):
    # main.py saves {'model', 'optimizer', 'epoch', 'model_ema', 'args', ...}; SyncBatchNorm has
    # BatchNorm's names and num_batches_tracked is not a model variable.
    config, state_dict, _, _ = read_fixture(1)
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': tensors, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 299,
                'model_ema': tensors, 'args': argparse.Namespace(model='dhvt_tiny_cifar_patch2')},
               path)
    model = fixture_model(config)
    from_file = tree.flatten(weights.load(model, path, strict=True))
    from_dict = tree.flatten(weights.load(model, state_dict, strict=True))
    assert from_file.keys() == from_dict.keys()
    assert any(k.startswith('batch_stats/patch_embed/bn_0/') for k in from_file)
    for key, value in from_dict.items():
        np.testing.assert_array_equal(from_file[key], value, err_msg=key)


@pytest.mark.slow
def test_explicit_attention_agrees_with_fused():
    config, state_dict, images, expected = read_fixture(2)
    model = fixture_model({**config, 'attn_impl': 'explicit'})
    variables = weights.load(model, state_dict)
    np.testing.assert_allclose(eval_logits(model, variables, images), expected, atol=1e-4)


def tiny(**overrides):
    options = dict(num_classes=4, img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    return DHVT(**{**options, **overrides})


def test_components_switched_off_is_deit(timm):
    """All three off is the authors' `apply_dhvt=False` model, i.e. timm's DeiT/ViT: its state
    dict loads and gives its logits."""
    from tests import torch_reference

    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=4.0,
        num_classes=4)
    state_dict = torch_reference.randomize(reference, seed=5)
    model = tiny(depth=2, sope=False, daff=False, hi_mhsa=False)
    images = np.random.RandomState(0).randn(3, 16, 16, 3).astype(np.float32)
    ours = eval_logits(model, weights.load(model, state_dict, strict=True), images)
    diff = np.abs(ours - torch_reference.logits(reference, images)).max()
    print(f'DHVT, all three off, vs timm VisionTransformer: max abs diff {diff:.3g}')
    assert diff < 1e-4


@pytest.mark.parametrize('switch, change', [
    # SOPE -> linear patch embedding (3*4*4*16 + 16) + absolute position embedding (17 * 16),
    # instead of affines (2*3 + 2*16), convs (3*3*3*8, 3*3*8*16) and BatchNorm (2*8 + 2*16).
    ('sope', (3 * 16 * 16 + 16 + 17 * 16) - (2 * 3 + 2 * 16 + 27 * 8 + 72 * 16 + 2 * 8 + 2 * 16)),
    # DAFF -> MLP: no BatchNorms (3 * 2 * hidden/dim), depthwise conv (9*64 + 64), SE (16*4 + 4
    # + 4*16 + 16); the 1x1 convolutions are the MLP's dense layers.
    ('daff', -(2 * 64 + 2 * 64 + 2 * 16 + 9 * 64 + 64 + 16 * 4 + 4 + 4 * 16 + 16)),
    # HI-MHSA -> plain attention: no head-token projection (head_dim 8 -> 16: 8*16 + 16), norm
    # (2 * 8) and head-token embedding (2 heads * 16).
    ('hi_mhsa', -(8 * 16 + 16 + 2 * 8 + 2 * 16)),
])
def test_each_switched_off_component_changes_the_parameters_it_owns(switch, change):
    def count(model):
        return sum(s.size for k, s in weights.model_shapes(model).items()
                   if k.startswith('params/'))

    assert count(tiny(**{switch: False})) - count(tiny()) == change


def test_batchnorm_statistics_update_with_pytorchs_momentum():
    # The fixture's weights carry non-default running statistics; one training-mode forward.
    config, state_dict, images, _ = read_fixture(1)
    model = fixture_model(config)
    variables = weights.load(model, state_dict)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
    _, new_stats = forward(variables, images)
    before = tree.flatten({'batch_stats': variables['batch_stats']})
    after = tree.flatten(new_stats)
    assert before.keys() == after.keys() and len(after) == 2 * (1 + 3 * config['depth'])
    for key in before:
        assert not np.allclose(before[key], after[key]), key
    # Flax momentum 0.9 is PyTorch's 0.1: the first BatchNorm's running mean moves a tenth of
    # the way to the batch mean of its input (the pre-affine, then the first convolution).
    params = variables['params']['patch_embed']
    x = images * params['pre_affine']['scale'] + params['pre_affine']['bias']
    conv = jax.lax.conv_general_dilated(x, params['conv_0']['kernel'], (2, 2), [(1, 1)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    key = 'batch_stats/patch_embed/bn_0/mean'
    np.testing.assert_allclose(after[key], 0.9 * before[key] + 0.1 * conv.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('patch_size', [1, 8, 14, 32])
def test_unsupported_patch_size_names_the_allowed_ones(patch_size):
    with pytest.raises(ModelError, match=rf'patch_size={patch_size} .*\[2, 4, 16\]'):
        tiny(patch_size=patch_size)
    with pytest.raises(ModelError, match=r'patch_size in \[2, 4, 16\]'):
        vit_jax.create_model('dhvt_tiny_cifar_patch4', patch_size=patch_size)


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(ModelError, match='image size 30 is not a multiple of the DHVT patch '
                                         'size 4; use 28 or 32'):
        tiny(img_size=30)
    with pytest.raises(ModelError, match='image size 20 is not a multiple .* 16; use 16 or 32'):
        vit_jax.create_model('dhvt_tiny_imagenet_patch16', img_size=20)
    with pytest.raises(ModelError, match='image size 18 is not a multiple'):
        tiny().init(jax.random.key(0), jnp.zeros((1, 18, 18, 3)))
    with pytest.raises(ModelError, match='num_heads=5'):
        tiny(num_heads=5)


def test_config_is_the_authors_cifar_recipe(load_config):
    c = load_config('dhvt.py:tiny_cifar_patch4,cifar100')
    config_lib.validate(c)
    assert c.model_name == 'dhvt_tiny_cifar_patch4' and c.model.drop_path_rate == 0.1
    assert (c.mixup_alpha, c.cutmix_alpha, c.ema_decay) == (0.8, 1.0, 0.99996)
    assert (c.optimizer, c.weight_decay, c.label_smoothing, c.decay_type) == \
        ('adamw', 0.05, 0.1, 'cosine')
    assert (c.batch, c.base_lr, c.grad_norm_clip, c.pp.crop, c.pp.pad) == (512, 1e-3, 0.0, 32, 4)
    assert (c.total_steps, c.warmup_steps) == (29_297, 489)  # 300 and 5 epochs of 50,000
    imagenet = load_config('dhvt.py:dhvt_small_imagenet_patch16,imagenet2012')
    assert (imagenet.pp.crop, imagenet.batch, imagenet.base_lr) == (224, 1024, 1e-3)
    with pytest.raises(ConfigError, match="unknown model 'tiny_cifar' for DHVT; .*_patch4"):
        load_config('dhvt.py:tiny_cifar,cifar10')


@pytest.mark.slow
def test_training_on_digits_updates_batchnorm_statistics_and_checkpoints_them(
        tmp_path, digits_data_dir, capsys, config_spec):
    # The standard trainer (make_train_step, Checkpointer) through the command line, 12 steps.
    workdir = str(tmp_path / 'run')
    spec = config_spec('dhvt.py:tiny_cifar_patch4,digits')
    overrides = [('tfds_data_dir', digits_data_dir), ('model.embed_dim', '16'),
                 ('model.depth', '1'), ('model.num_heads', '2'), ('batch', '32'),
                 ('total_steps', '12'), ('warmup_steps', '2'), ('progress_every', '6'),
                 ('eval_every', '0'), ('checkpoint_every', '12')]
    argv = [f'--config={spec}', f'--workdir={workdir}']
    argv += [f'--config.{key}={value}' for key, value in overrides]
    assert main.main(argv) == 0, capsys.readouterr().err
    losses = [r['train_loss'] for r in Workdir(workdir).read_metrics() if 'train_loss' in r]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert json.loads(open(os.path.join(workdir, 'final_metrics.json')).read())['count'] == 360

    config = config_lib.apply_overrides(config_lib.load_config(spec), overrides)
    model = vit_jax.create_model(config.model_name, **config_lib.model_overrides(config),
                                 num_classes=10, img_size=16)
    template = jax.eval_shape(functools.partial(
        step.create_train_state, model, optim.create_optimizer(config)[0],
        image_shape=(1, 16, 16, 3)), jax.random.key(0))
    restored, _ = Workdir(workdir).checkpointer(every=12, keep=1).restore(
        template, config.model_name)
    assert int(restored.step) == 12
    stats = tree.flatten(restored.model_state)
    assert len(stats) == 2 * (2 + 3) and all(np.isfinite(v).all() for v in stats.values())
    for key, value in stats.items():  # moved away from their init (mean 0, variance 1)
        assert not np.allclose(value, 0.0 if key.endswith('mean') else 1.0), key
