"""Layer-wise learning-rate decay: each family's depths (embedding 0, blocks in order with
stages flattened, final norm and head last), and updates equal to decay^(L - d) times the
undecayed ones, stacked layers included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_jax
from vit_jax import config as config_lib
from vit_jax import tree
from vit_jax.models import contract
from vit_jax.train import optim

# One model per family: (name, options, blocks, depth-0 modules, last modules).
FAMILIES = [
    ('ViT-Ti_16', {}, 12, {'cls', 'embedding', 'Transformer/posembed_input'},
     {'Transformer/encoder_norm', 'head'}),
    ('R26+ViT-S_32', {}, 12,
     {'cls', 'embedding', 'Transformer/posembed_input', 'conv_root', 'gn_root'} |
     {f'block{s}' for s in range(1, 5)}, {'Transformer/encoder_norm', 'head'}),
    ('BiT-R50x1', {}, 3 + 4 + 6 + 3, {'conv_root'}, {'gn_final', 'head'}),
    ('swin_tiny_patch4_window7_224', {}, 2 + 2 + 6 + 2, {'patch_embed', 'patch_norm'},
     {'norm', 'head'}),
    ('convnext_tiny', {}, 3 + 3 + 9 + 3, {'stem', 'stem_norm'}, {'head_norm', 'head'}),
    ('dhvt_tiny_cifar_patch4', {}, 12, {'cls', 'patch_embed'}, {'norm', 'head'}),
    # Recursive blocks and projections share depths: see test_sret_pools_follow_their_stage.
    ('SReT_T', {}, None, {'stem', 'pos_embed'}, {'norm', 'head'}),
]


def param_names(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, model.img_size, model.img_size, model.in_chans)))
    flat = tree.unstack_layers(tree.flatten(shapes), model.stacked_layers)
    return [k.removeprefix('params/') for k in flat if k.startswith('params/')]


def module_of(name):
    parts = name.split('/')
    return '/'.join(parts[:2]) if parts[0] == 'Transformer' else parts[0]


@pytest.mark.parametrize('name, options, blocks, stem, last', FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_every_family_declares_its_depths(name, options, blocks, stem, last):
    model = vit_jax.create_model(name, num_classes=10, **options)
    depths = contract.layer_depths(type(model), param_names(model))
    deepest = max(depths.values())
    modules = {d: {module_of(n) for n, v in depths.items() if v == d} for d in (0, deepest)}
    assert modules[0] == stem
    assert modules[deepest] == last
    # Depths 1 ... L - 1 are the blocks, each present.
    assert set(depths.values()) == set(range(deepest + 1))
    if blocks is not None:
        assert deepest == blocks + 1


def test_sret_pools_follow_their_stage():
    model = vit_jax.create_model('SReT_T', num_classes=10)
    depths = contract.layer_depths(type(model), param_names(model))
    stage0 = max(v for n, v in depths.items() if n.startswith('stage_0/'))
    stage1 = min(v for n, v in depths.items() if n.startswith('stage_1/'))
    assert depths['pool_0/kernel'] == stage0 + 1 == stage1 - 1


def updates(config_overrides, model, seed=0):
    """The first update of SGD with momentum under `config_overrides` for random gradients."""
    config = config_lib.base_config()
    config.model_name = 'testing'
    config_lib.apply_overrides(config, [('warmup_steps', '0'), ('grad_norm_clip', '0'),
                                        *config_overrides])
    tx, _ = optim.create_optimizer(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    grads = treedef.unflatten([jax.random.normal(k, x.shape)
                               for k, x in zip(keys, leaves, strict=True)])
    return tx.update(grads, tx.init(params), params)[0]


@pytest.mark.parametrize('scan_layers', [False, True])
def test_update_at_depth_d_is_decay_to_the_L_minus_d_times_the_undecayed_one(scan_layers):
    model = vit_jax.create_model('testing', depth=3, num_classes=5, img_size=8, patch_size=4,
                                 scan_layers=scan_layers)
    plain = tree.flatten(updates([], model))
    decayed = tree.flatten(updates([('layer_decay', '0.65')], model))
    # L = 4: embedding at 0, blocks 1-3, the final norm and head at 4.
    block = 'Transformer/encoderblock'
    expected = {'embedding/kernel': 0.65 ** 4, 'cls': 0.65 ** 4,
                'Transformer/posembed_input/pos_embedding': 0.65 ** 4,
                'Transformer/encoder_norm/scale': 1.0, 'head/kernel': 1.0, 'head/bias': 1.0}
    for name, factor in expected.items():
        np.testing.assert_allclose(decayed[name], factor * plain[name], rtol=1e-6)
    kernel = 'MlpBlock_3/Dense_0/kernel'
    if scan_layers:
        for i in range(3):
            np.testing.assert_allclose(decayed[f'{block}/{kernel}'][i],
                                       0.65 ** (3 - i) * plain[f'{block}/{kernel}'][i], rtol=1e-6)
    else:
        for i in range(3):
            np.testing.assert_allclose(decayed[f'{block}_{i}/{kernel}'],
                                       0.65 ** (3 - i) * plain[f'{block}_{i}/{kernel}'],
                                       rtol=1e-6)
    assert np.abs(plain['head/kernel']).max() > 0  # the comparison is not between zeros


def test_layer_decay_keeps_the_optimizer_state_layout():
    model = vit_jax.create_model('testing', depth=2, num_classes=5, img_size=8, patch_size=4)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']

    def state_shapes(overrides):
        config = config_lib.base_config()
        config.model_name = 'testing'
        config_lib.apply_overrides(config, overrides)
        return [x.shape for x in jax.tree.leaves(optim.create_optimizer(config)[0].init(params))]

    assert state_shapes([('layer_decay', '0.5')]) == state_shapes([])
