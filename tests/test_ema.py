"""The moving average of the weights (`ema_decay`): the closed-form average of the trajectory,
BatchNorm statistics included, its placement, checkpoints (with and without it), and (slow) a
crashed loop run with mixing and EMA resuming bit-exactly, digits learning with both."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scale_worker

import vit_jax
from vit_jax import tree, weights
from vit_jax.data import arrays
from vit_jax.errors import ConfigError
from vit_jax.models import contract
from vit_jax.train import sharding, step
from vit_jax.train.loop import train
from vit_jax.train.workdir import Workdir

OLD_CHECKPOINT_ITEMS = ['model_state', 'opt_state', 'params', 'rng', 'step']


class ConvBN(nn.Module, contract.Family):
    """Parameters and BatchNorm statistics, both averaged."""

    num_classes: int = 4
    img_size: int = 8
    in_chans: int = 3
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))


def random_batch(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return {'image': jnp.asarray(rng.randn(n, 8, 8, 3), jnp.float32),
            'label': jnp.asarray(rng.randint(0, 4, n), jnp.int32)}


def test_ema_is_the_average_of_the_trajectory_and_leaves_training_alone():
    model, tx, decay, steps = ConvBN(), optax.adam(3e-2), 0.8, 8
    state = step.create_train_state(model, tx, jax.random.key(0), (1, 8, 8, 3), ema=True)
    with_ema = jax.jit(step.make_train_step(model, tx, options=step.StepOptions(ema_decay=decay)))
    without = jax.jit(step.make_train_step(model, tx))
    plain = state.replace(ema={})
    trajectory = [{'params': state.params, **state.model_state}]
    for i in range(steps):
        state, _ = with_ema(state, random_batch(seed=i))
        plain, _ = without(plain, random_batch(seed=i))
        trajectory.append({'params': state.params, **state.model_state})
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the average never feeds back into training
    # ema_N = d^N v_0 + sum_t (1 - d) d^(N - t) v_t, in float64.
    weights_t = [decay ** steps] + [(1 - decay) * decay ** (steps - t)
                                    for t in range(1, steps + 1)]
    expected = jax.tree.map(
        lambda *vs: sum(w * np.float64(v) for w, v in zip(weights_t, vs, strict=True)),
        *trajectory)
    assert set(state.ema) == {'params', 'batch_stats'}
    worst = max(float(np.abs(np.float64(a) - b).max()) for a, b in zip(
        jax.tree.leaves(state.ema), jax.tree.leaves(expected), strict=True))
    print(f'EMA vs the closed-form average: max abs diff {worst:.1e}')
    assert worst < 1e-6
    mean = state.ema['batch_stats']['BatchNorm_0']['mean']
    assert not np.allclose(mean, trajectory[-1]['batch_stats']['BatchNorm_0']['mean'])
    # Evaluation reports both weights; the average differs from the raw weights.
    sums = jax.jit(step.make_eval_step(model))(state, {**random_batch(), 'mask': jnp.ones(16)})
    assert set(sums) == {'correct', 'loss', 'ema_correct', 'ema_loss', 'count'}
    assert sums['loss'] != sums['ema_loss']


def test_ema_parameters_are_placed_as_the_parameters():
    model = vit_jax.create_model('testing', num_classes=4, img_size=8, patch_size=4,
                                 embed_dim=16)
    shapes = jax.eval_shape(lambda r: step.create_train_state(
        model, optax.sgd(0.1), r, (1, 8, 8, 3), ema=True), jax.random.key(0))
    specs = sharding.state_specs(shapes, 2, [('.*', 'fsdp')], min_size=32)
    assert specs.ema['params'] == specs.params
    kernel = specs.params['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']
    assert kernel == jax.sharding.PartitionSpec('fsdp', None)


def test_without_ema_state_and_checkpoints_are_as_before(tmp_path):
    model, tx = ConvBN(), optax.sgd(0.1)
    state = step.create_train_state(model, tx, jax.random.key(0), (1, 8, 8, 3))
    state, _ = jax.jit(step.make_train_step(model, tx))(state, random_batch())
    assert state.ema == {}
    ckpt = Workdir(str(tmp_path / 'plain')).checkpointer(every=1, keep=1)
    ckpt.maybe_save(1, state, {'model_name': 'convbn', 'examples_seen': 16})
    ckpt.close()
    assert sorted(ckpt._manager.item_metadata(1)['state']) == OLD_CHECKPOINT_ITEMS
    restored, _ = Workdir(str(tmp_path / 'plain')).checkpointer(every=1, keep=1).restore(
        step.create_train_state(model, tx, jax.random.key(1), (1, 8, 8, 3)), 'convbn')
    for a, b in zip(*(jax.tree.leaves(s.replace(rng=jax.random.key_data(s.rng)))
                      for s in (state, restored)), strict=True):
        np.testing.assert_array_equal(a, b)
    # A run with a moving average cannot resume one without (and the other way round).
    with pytest.raises(ConfigError, match=r'^--workdir holds checkpoints without a moving '
                                          r'average of the weights, and this run has one; set '
                                          r'--config.ema_decay as the run that wrote .*, or use '
                                          r'a new --workdir$'):
        Workdir(str(tmp_path / 'plain')).checkpointer(every=1, keep=1).restore(
            step.create_train_state(model, tx, jax.random.key(1), (1, 8, 8, 3), ema=True),
            'convbn')
    assert os.listdir(tmp_path / 'plain' / 'checkpoints') == ['1']  # not set aside


def test_ema_state_is_restored_from_a_checkpoint_and_training_continues_identically(tmp_path):
    model, tx = ConvBN(), optax.adam(3e-2)
    train_step = jax.jit(step.make_train_step(model, tx, options=step.StepOptions(ema_decay=0.9)))
    state = step.create_train_state(model, tx, jax.random.key(0), (1, 8, 8, 3), ema=True)
    for i in range(3):
        state, _ = train_step(state, random_batch(seed=i))
    ckpt = Workdir(str(tmp_path)).checkpointer(every=1, keep=1)
    ckpt.maybe_save(3, state, {'model_name': 'convbn', 'examples_seen': 48})
    ckpt.close()
    template = step.create_train_state(model, tx, jax.random.key(1), (1, 8, 8, 3), ema=True)
    restored, _ = Workdir(str(tmp_path)).checkpointer(every=1, keep=1).restore(
        template, 'convbn')
    assert not np.array_equal(restored.ema['params']['Dense_0']['kernel'],
                              template.ema['params']['Dense_0']['kernel'])
    continued, resumed = train_step(state, random_batch(seed=3))[0], \
        train_step(restored, random_batch(seed=3))[0]
    for a, b in zip(jax.tree.leaves(continued.ema), jax.tree.leaves(resumed.ema), strict=True):
        np.testing.assert_array_equal(a, b)


def crashing(make, after_batches):
    """`make`'s datasets, whose training stream raises after `after_batches` batches."""

    def datasets(config, start):
        train_iter, make_eval, info = make(config, start)

        def batches(seen=start):
            for batch in train_iter:
                if seen >= after_batches * config.batch:
                    raise RuntimeError('simulated crash')
                seen += config.batch
                yield batch

        return batches(), make_eval, info

    return datasets


@pytest.mark.slow
def test_crashed_run_with_mixing_and_ema_resumes_bit_exactly(tmp_path):
    overrides = [('mixup_alpha', '0.8'), ('cutmix_alpha', '1.0'), ('label_smoothing', '0.1'),
                 ('ema_decay', '0.9'), ('checkpoint_every', '3'), ('model.drop_rate', '0.1')]
    config = scale_worker.make_config(overrides)
    data = arrays.array_datasets(*scale_worker.synthetic(),
                                 num_classes=scale_worker.NUM_CLASSES)
    final = train(config, str(tmp_path / 'reference'), datasets=data)
    reference = scale_worker.final_params(config, str(tmp_path / 'reference'))
    with pytest.raises(RuntimeError, match='simulated crash'):  # after step 4; saved step 3
        train(config, str(tmp_path / 'run'), datasets=crashing(data, 4))
    assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['3']
    resumed = train(config, str(tmp_path / 'run'), datasets=data)
    params = scale_worker.final_params(config, str(tmp_path / 'run'))
    assert sorted(params) == sorted(reference) and any(k.startswith('ema/') for k in params)
    assert max(float(np.abs(params[k] - reference[k]).max()) for k in params) == 0.0
    assert resumed == {**final, 'train_seconds': resumed['train_seconds']}
    # Both weights are evaluated and written: weights_ema.npz holds the average.
    saved = json.loads((tmp_path / 'run' / 'final_metrics.json').read_text())
    assert {'accuracy', 'loss', 'ema_accuracy', 'ema_loss'} <= set(saved)
    assert 'eval_ema_accuracy' in Workdir(str(tmp_path / 'run')).read_metrics()[-1]
    ema_file = tree.flatten(weights.read(str(tmp_path / 'run' / 'weights_ema.npz')))
    raw_file = tree.flatten(weights.read(str(tmp_path / 'run' / 'weights.npz')))
    name = 'Transformer/encoder_norm/scale'
    np.testing.assert_array_equal(ema_file[name], params[f'ema/params/{name}'])
    np.testing.assert_array_equal(raw_file[name], params[f'params/{name}'])


@pytest.mark.slow
def test_digits_learn_with_mixup_cutmix_and_ema(tmp_path, digits_config):
    config = digits_config(
        ('total_steps', '600'), ('warmup_steps', '50'), ('mixup_alpha', '0.8'),
        ('cutmix_alpha', '1.0'), ('label_smoothing', '0.1'), ('ema_decay', '0.99'),
        ('eval_every', '0'), ('checkpoint_every', '0'))
    final = train(config, str(tmp_path))
    print(f'digits, mixup + cutmix + EMA 0.99, 600 steps: accuracy {final["accuracy"]:.4f}, '
          f'EMA {final["ema_accuracy"]:.4f}')
    assert final['accuracy'] >= 0.9 and final['ema_accuracy'] >= 0.9, final
