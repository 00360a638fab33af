"""SReT: the authors' logits from their state dict, exact parameter counts, permutations,
mixed-depth training, bad input, BatchNorm through the train step, and a run of the trainer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REFERENCE

import vit_jax
from vit_jax import config as config_lib
from vit_jax import weights
from vit_jax.errors import ModelError
from vit_jax.main import main
from vit_jax.models import get_spec
from vit_jax.models.sret import SReT
from vit_jax.train import step
from vit_jax.train.workdir import Workdir

FIXTURE = os.path.join(REFERENCE, 'sret_seed3.npz')
ARCH_KEYS = ('base_dims', 'depth', 'recursive_num', 'heads', 'groups1', 'groups2')

@pytest.fixture(scope='module')
def reference():
    """The fixture's model, its converted variables, and the arrays it holds."""
    data = np.load(FIXTURE)
    config = json.loads(str(data['config']))
    model = SReT(num_classes=config['num_classes'], img_size=config['image_size'],
                 mlp_ratio=config['mlp_ratio'], np_mlp_ratio=config['np_mlp_ratio'],
                 **{k: tuple(config[k]) for k in ARCH_KEYS})
    sd = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
    perms = [data[f'perm/{i}'] for i in range(sum(k.startswith('perm/') for k in data.files))]
    return model, weights.load(model, sd, strict=True), sd, perms, data


def test_reproduces_the_authors_logits_with_their_permutations(reference):
    model, variables, _, perms, data = reference
    assert model.permutation_sizes == [p.size for p in perms] == [64, 64]
    apply = jax.jit(lambda v, x, p: model.apply(v, x, permutations=p))
    logits = np.asarray(apply(variables, data['input'], perms))
    diff = np.abs(logits - data['logits']).max()
    print(f'sret_seed3 max abs diff {diff:.2e}')
    assert diff <= 1e-4
    # The permutation matters: contiguous groups (no permutation) give other logits.
    identity = [np.arange(p.size) for p in perms]
    assert np.abs(np.asarray(apply(variables, data['input'], identity)) - logits).max() > 1e-3


def test_shared_block_copies_must_agree(reference):
    model, _, sd, _, _ = reference
    bad = dict(sd)
    key = 'transformers.0.blocks.2.attn.proj.bias'
    bad[key] = sd[key] + 1.0
    with pytest.raises(ModelError, match='blocks.2.attn.proj.bias differs'):
        weights.load(model, bad)


def test_registry_keeps_the_authors_preprocessing():
    cfg = get_spec('SReT_S').pretrained_cfg
    assert cfg['input_size'] == (224, 224, 3) and cfg['mean'] == (0.485, 0.456, 0.406)
    assert get_spec('SReT_S_wo_slice_distill_finetune_512').pretrained_cfg['input_size'] == \
        (512, 512, 3)
    assert get_spec('SReT_T_distill').kwargs == get_spec('SReT_T').kwargs


def test_token_counts_the_groups_do_not_divide_are_refused():
    # 200 px: a 25x25 grid, 625 tokens, which groups1=8 does not divide.
    with pytest.raises(ModelError, match=r'625 tokens .* groups1=8 does not divide; use '
                                         r'img_size=192 or 224'):
        vit_jax.create_model('SReT_T', img_size=200)
    with pytest.raises(ModelError, match='not a multiple of 8'):
        vit_jax.create_model('SReT_T', img_size=100)
    vit_jax.create_model('SReT_T_wo_slice', img_size=200)  # no groups: any multiple of 8


def tiny(**overrides):
    """Two stages of 16 and 4 tokens at 32 px (each a shared block applied twice); one
    permutation of 16 per forward pass. `num_classes=0`: features (the head starts at zero)."""
    kwargs = dict(num_classes=0, img_size=32, base_dims=(4, 4), heads=(2, 4), depth=(2, 2),
                  recursive_num=(1, 1), groups1=(4, 2), groups2=(2, 1), mlp_ratio=2.0,
                  np_mlp_ratio=1.0)
    return SReT(**{**kwargs, **overrides})


def images(n=4, size=32, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(n, size, size, 3), jnp.float32)


@pytest.mark.slow
def test_permutations_come_from_the_permute_stream_or_explicitly():
    model, x = tiny(), images()
    variables = model.init(jax.random.key(0), x)
    assert model.permutation_sizes == [16]
    apply = lambda x, perms=None, rngs=None: model.apply(  # noqa: E731
        variables, x, permutations=perms, rngs=rngs)
    plain = apply(x)  # evaluation without the stream: no permutation, deterministic
    np.testing.assert_array_equal(plain, apply(x, [jnp.arange(16)]))
    key = {'permute': jax.random.key(1)}
    shuffled = apply(x, rngs=key)
    np.testing.assert_array_equal(shuffled, apply(x, rngs=key))
    assert np.abs(shuffled - plain).max() > 1e-4
    interleaved = apply(x, [jnp.concatenate([jnp.arange(0, 16, 2), jnp.arange(1, 16, 2)])])
    assert np.abs(interleaved - plain).max() > 1e-4
    with pytest.raises(ModelError, match=r'1 arrays of lengths \[16\]'):
        model.apply(variables, x, permutations=[jnp.arange(4)])
    with pytest.raises(ModelError, match="rngs={'permute': key}"):
        model.apply(variables, x, train=True, mutable=['batch_stats'])


def test_mixed_depth_training_skips_recursive_passes_per_example():
    x = images(8)
    deep = tiny(groups2=(1, 1))
    variables = deep.init(jax.random.key(0), x)
    shallow = tiny(groups2=(1, 1), depth=(1, 1))  # the same weights without recursion
    shallow_vars = {**variables, 'params': {
        k: {n: p for n, p in v.items() if n != 'nll_1'} if k.startswith('stage_') else v
        for k, v in variables['params'].items()}}

    def run(model, v, seed=0):
        return np.asarray(model.apply(v, x, train=True, mutable=['batch_stats'],
                                      rngs={'dropout': jax.random.key(seed)})[0])

    full, short = run(deep, variables), run(shallow, shallow_vars)
    assert np.abs(full - short).max() > 1e-3
    almost_always = tiny(groups2=(1, 1), mixed_depth_rate=0.999999)
    np.testing.assert_allclose(run(almost_always, variables), short, atol=1e-5)
    # At 0.5 each example takes its own mixture of depths across the two stages.
    mixed = tiny(groups2=(1, 1), mixed_depth_rate=0.5)
    out = np.stack([run(mixed, variables, seed) for seed in range(4)])
    as_deep = np.isclose(out, full, atol=1e-5).all(-1)
    as_shallow = np.isclose(out, short, atol=1e-5).all(-1)
    assert as_deep.any() and as_shallow.any() and not (as_deep | as_shallow).all()
    np.testing.assert_allclose(mixed.apply(variables, x), deep.apply(variables, x), atol=1e-6)


@pytest.mark.slow
def test_batchnorm_statistics_update_through_the_train_step():
    model, tx = tiny(num_classes=4), optax.adamw(1e-3)
    state = step.create_train_state(model, tx, jax.random.key(0), (1, 32, 32, 3))
    before = state.model_state['batch_stats']['stem']['bn1']
    batch = {'image': images(8), 'label': jnp.arange(8) % 4}
    train_step = jax.jit(step.make_train_step(
        model, tx, options=step.StepOptions(label_smoothing=0.1)))
    for _ in range(2):
        state, m = train_step(state, batch)
    after = state.model_state['batch_stats']['stem']['bn1']
    assert np.isfinite(m['loss'])
    # flax momentum 0.9 == PyTorch momentum 0.1: mean <- 0.9 mean + 0.1 batch mean.
    assert np.abs(after['mean'] - before['mean']).max() > 1e-3
    assert np.abs(after['var'] - before['var']).max() > 1e-3


def test_config_is_the_deit_recipe(load_config):
    config = load_config('sret.py:tiny,imagenet2012')
    assert config.model_name == 'SReT_T' and config.model.drop_path_rate == 0.1
    assert (config.mixup_alpha, config.cutmix_alpha, config.ema_decay) == (0.8, 1.0, 0.99996)
    assert (config.optimizer, config.weight_decay, config.label_smoothing) == ('adamw', 0.05, 0.1)
    assert (config.base_lr, config.batch, config.decay_type) == (1e-3, 1024, 'cosine')
    assert config.warmup_steps == 6255 and config.total_steps == 375_341
    small = load_config('sret.py:small_wo_slice,cifar100')
    assert small.model_name == 'SReT_S_wo_slice'
    config_lib.validate(config)


@pytest.mark.slow
def test_trains_on_digits_through_the_trainer(tmp_path, digits_data_dir, config_spec):
    workdir = str(tmp_path)
    code = main([
        '--config=' + config_spec('sret.py:tiny,digits'),
        f'--workdir={workdir}', f'--config.tfds_data_dir={digits_data_dir}',
        '--config.model.base_dims=(4, 4)', '--config.model.heads=(2, 4)',
        '--config.model.depth=(2, 2)', '--config.model.recursive_num=(1, 1)',
        '--config.model.groups1=(8, 4)', '--config.model.groups2=(2, 1)',
        '--config.total_steps=60', '--config.warmup_steps=5', '--config.base_lr=3e-3',
        '--config.batch=64', '--config.progress_every=20', '--config.eval_every=0',
        '--config.checkpoint_every=60'])
    assert code == 0
    records = Workdir(workdir).read_metrics()
    losses = [r['train_loss'] for r in records if 'train_loss' in r]
    assert len(losses) == 3 and losses[-1] < losses[0]
    final = json.loads((tmp_path / 'final_metrics.json').read_text())
    assert final['count'] == 360 and final['accuracy'] > 0.2, final
    assert os.listdir(tmp_path / 'checkpoints')
