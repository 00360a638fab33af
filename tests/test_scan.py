"""`scan_layers`: a ViT whose blocks are one `nn.scan` computes what the unscanned one does with
the same weights (eval, train, SGD steps, remat, the hybrid), the weights load and save both
ways (also through the trainer's weights.npz), stacked parameters are decayed and sharded per
layer, the attention analyses read them, and a traced drop-path rate equals a fixed one."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import vit_jax
from vit_jax import config as config_lib
from vit_jax import tree, weights
from vit_jax.analysis import attention
from vit_jax.models import layers
from vit_jax.train import optim, sharding, step
from vit_jax.train.loop import train
from vit_jax.train.workdir import Workdir

SMALL = dict(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2,
             drop_rate=0.0)


def pair(name='testing', **kwargs):
    """(unscanned model, scanned model, the unscanned model's random variables)."""
    unscanned = vit_jax.create_model(name, **{**SMALL, **kwargs})
    scanned = unscanned.clone(scan_layers=True)
    variables = jax.jit(unscanned.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    noise = np.random.default_rng(0)  # a head that is not zero, so logits differ by example
    variables = jax.tree.map(lambda x: x + 0.1 * noise.normal(size=x.shape).astype(x.dtype),
                             jax.device_get(variables))
    return unscanned, scanned, variables


def images(batch=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, 16, 16, 3))


def flat_params(params):
    return {k: np.asarray(v) for k, v in tree.unstack_layers(
        tree.flatten({'params': params})).items()}


def test_scanned_parameters_are_stacked_under_big_visions_name():
    unscanned, scanned, variables = pair()
    shapes = weights.model_shapes(scanned)
    stacked = 'params/Transformer/encoderblock/MlpBlock_3/Dense_0/kernel'
    assert shapes[stacked].shape == (3, 16, 16)
    assert not any('encoderblock_' in k for k in shapes)
    # The same arrays, one per layer, as the unscanned model's.
    unstacked = tree.unstack_layers(shapes)
    assert {k: v.shape for k, v in unstacked.items()} == {
        k: v.shape for k, v in weights.model_shapes(unscanned).items()}


@pytest.mark.parametrize('case', ['vit', 'hybrid'])
def test_scanned_logits_equal_unscanned_in_eval_and_train(case):
    kwargs = {'vit': {'classifier': 'gap', 'pos_embed': 'sincos2d', 'drop_path_rate': 0.0},
              'hybrid': {'resnet_layers': (), 'patch_size': 1}}[case]  # R+ViT: root, 4x4 grid
    unscanned, scanned, variables = pair(**kwargs)
    stacked = weights.load(scanned, variables, strict=True)
    x = images()
    for train_mode in (False, True):
        rngs = {'dropout': jax.random.key(2)}
        a = jax.jit(unscanned.apply, static_argnames='train')(variables, x, train=train_mode,
                                                               rngs=rngs)
        b = jax.jit(scanned.apply, static_argnames='train')(stacked, x, train=train_mode,
                                                             rngs=rngs)
        assert np.abs(np.asarray(a)).max() > 0.1
        assert float(jnp.abs(a - b).max()) <= 1e-6, (case, train_mode)


@pytest.mark.slow
def test_sgd_steps_through_make_train_step_agree():
    unscanned, scanned, variables = pair(depth=2)
    tx = optax.sgd(0.5, momentum=0.9)
    x, labels = images(8), jnp.arange(8) % 5
    finals = []
    for model in (unscanned, scanned, scanned.clone(remat=True)):
        params = weights.load(model, variables)['params']
        state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params), model_state={},
                                rng=jax.random.key(3))
        train_step = jax.jit(step.make_train_step(model, tx))
        for _ in range(3):
            state, _ = train_step(state, {'image': x, 'label': labels})
        finals.append(flat_params(state.params))
    start = flat_params(variables['params'])
    moved = max(float(np.abs(finals[0][k] - start[k]).max()) for k in start)
    assert moved > 1e-2
    for final in finals[1:]:  # scanned, scanned with remat
        assert final.keys() == start.keys()
        diff = max(float(np.abs(finals[0][k] - final[k]).max()) for k in start)
        assert diff < 1e-5, diff


def test_traced_drop_path_rate_equals_the_fixed_rate():
    x = jax.random.normal(jax.random.key(0), (64, 3, 4))
    rngs = {'dropout': jax.random.key(1)}
    fixed = layers.DropPath(0.3).apply({}, x, deterministic=False, rngs=rngs)
    traced = jax.jit(lambda r: layers.DropPath().apply(
        {}, x, deterministic=False, rate=r, rngs=rngs))
    np.testing.assert_allclose(traced(jnp.float32(0.3)), fixed, rtol=1e-6)  # the same mask
    np.testing.assert_array_equal(traced(jnp.float32(0.0)), x)  # rate 0: unchanged
    dropped = (fixed == 0).all(axis=(1, 2)).mean()
    assert 0.1 < dropped < 0.5


def test_scanned_drop_path_rises_per_layer():
    # depth 2 with rate 1: layer 0 keeps everything (rate 0), layer 1 drops every branch, so the
    # train-mode output is exactly that of a 1-block model with the first block's weights.
    unscanned, scanned, variables = pair(depth=2, drop_path_rate=1.0)
    stacked = weights.load(scanned, variables)
    one = unscanned.clone(depth=1, drop_path_rate=0.0)
    first = weights.load(one, variables)  # ignores encoderblock_1
    x = images()
    got = scanned.apply(stacked, x, train=True, rngs={'dropout': jax.random.key(4)})
    np.testing.assert_allclose(got, one.apply(first, x), atol=1e-6)


def test_weights_load_both_ways_and_save_unstacked(tmp_path):
    unscanned, scanned, variables = pair()
    stacked = weights.load(scanned, variables, strict=True)
    # In-memory stacked variables load into the unscanned model, bit for bit.
    back = weights.load(unscanned, stacked, strict=True)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, jax.device_get(variables)))
    weights.save_npz(stacked, tmp_path / 'w.npz')
    with np.load(tmp_path / 'w.npz') as f:
        assert 'Transformer/encoderblock_2/MlpBlock_3/Dense_1/bias' in f.files
        assert not any(k.startswith('Transformer/encoderblock/') for k in f.files)
    again = weights.load(unscanned, tmp_path / 'w.npz', strict=True)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, jax.device_get(variables)))
    # A head of another class count is re-initialised as for the unscanned model.
    other = scanned.clone(num_classes=3)
    loaded = weights.load(other, tmp_path / 'w.npz')
    assert loaded['params']['head']['kernel'].shape == (16, 3)
    np.testing.assert_array_equal(loaded['params']['Transformer']['encoderblock']['LayerNorm_0'][
        'scale'], stacked['params']['Transformer']['encoderblock']['LayerNorm_0']['scale'])


def test_weight_decay_and_fsdp_judge_stacked_parameters_per_layer():
    _, scanned, _ = pair(embed_dim=32, depth=8, num_heads=2)
    params = weights.model_shapes(scanned)
    variables = jax.eval_shape(lambda: scanned.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    mask = tree.flatten({'params': optim.decay_mask(type(scanned))(variables['params'])})
    block = 'params/Transformer/encoderblock/'
    assert mask[block + 'MlpBlock_3/Dense_0/kernel']  # [8, 32, 32]: a matrix per layer
    assert not mask[block + 'LayerNorm_0/scale']  # [8, 32]: a norm per layer
    assert not mask[block + 'MlpBlock_3/Dense_0/bias']
    def specs(min_size):
        return {k: sharding.param_spec(k, v.shape, 8, [('.*', 'fsdp')], min_size)
                for k, v in params.items()}

    # The layer axis (8: divisible by 8, and the largest of a norm's [8, 32]) is never split.
    split = specs(min_size=32)
    assert split[block + 'LayerNorm_0/scale'] == P(None, 'fsdp')
    assert split[block + 'MlpBlock_3/Dense_0/kernel'] == P(None, 'fsdp', None)
    assert split[block + 'MultiHeadDotProductAttention_1/query/bias'] == P(None, None, 'fsdp')
    # fsdp_min_size counts one layer's elements (32 here), as for the unscanned model.
    replicated = specs(min_size=33)
    assert replicated[block + 'MultiHeadDotProductAttention_1/query/bias'] == P()
    assert replicated[block + 'MlpBlock_3/Dense_0/kernel'] == P(None, 'fsdp', None)


def test_attention_analysis_reads_a_scanned_model():
    unscanned, scanned, variables = pair()
    x = images(2)
    a = attention.attention_weights(unscanned, variables, x)
    b = attention.attention_weights(scanned, weights.load(scanned, variables), x)
    assert len(a) == len(b) == 3 and b[0].shape == (2, 2, 17, 17)
    assert max(float(jnp.abs(u - v).max()) for u, v in zip(a, b, strict=True)) <= 1e-6


@pytest.mark.slow
def test_trainer_run_with_scan_writes_weights_an_unscanned_model_reads(tmp_path,
                                                                       digits_config):
    config = digits_config(
        ('model.embed_dim', '16'), ('model.depth', '2'), ('model.num_heads', '2'),
        ('model.scan_layers', 'True'), ('batch', '32'), ('total_steps', '4'),
        ('warmup_steps', '1'), ('progress_every', '2'), ('eval_every', '0'),
        ('checkpoint_every', '0'))
    train(config, str(tmp_path))
    overrides = config_lib.model_overrides(config)
    assert overrides['scan_layers'] is True
    scanned = vit_jax.create_model(config.model_name, **overrides, num_classes=10, img_size=16)
    unscanned = scanned.clone(scan_layers=False)
    path = tmp_path / 'weights.npz'
    with np.load(path) as f:
        assert 'Transformer/encoderblock_1/LayerNorm_0/scale' in f.files
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    a = unscanned.apply(weights.load(unscanned, path, strict=True), x)
    b = scanned.apply(weights.load(scanned, path, strict=True), x)
    assert np.abs(np.asarray(a)).max() > 0.01
    assert float(jnp.abs(a - b).max()) <= 1e-6


@pytest.mark.slow
def test_resuming_with_the_other_scan_setting_is_a_clear_error(tmp_path):
    import scale_worker

    from vit_jax.data.arrays import array_datasets
    from vit_jax.errors import ConfigError

    def run(scan):
        config = scale_worker.make_config([('total_steps', '2'), ('model.scan_layers', scan)])
        data = array_datasets(*scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES)
        return train(config, str(tmp_path), datasets=data)

    run('False')
    with pytest.raises(ConfigError, match=r'holds a run of another config \(model.scan_layers='
                                          r'False there, True here\); rerun with its values'):
        run('True')  # the run record refuses it before any checkpoint is opened
    config = scale_worker.make_config([('model.scan_layers', 'True')])
    model = vit_jax.create_model('testing', **config_lib.model_overrides(config),
                                 num_classes=scale_worker.NUM_CLASSES, img_size=8)
    scanned = step.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (1, 8, 8, 3))
    checkpointer = Workdir(str(tmp_path)).checkpointer(every=0, keep=1, read_only=True)
    with pytest.raises(ConfigError, match='written with --config.model.scan_layers=False; '
                                          'resume with that setting'):
        checkpointer.restore(scanned, 'testing')  # and so would the checkpoint
    checkpointer.close()
