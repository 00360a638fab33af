"""Training: convergence on real data, gradient accumulation, BatchNorm state, checkpoints and
resume, the tfds path under mock data, and that evaluation counts every example."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import vit_jax
from vit_jax import config as config_lib
from vit_jax import predict
from vit_jax.data import digits
from vit_jax.models import contract
from vit_jax.train import optim, step
from vit_jax.train.loop import train
from vit_jax.train.workdir import Workdir


def test_digits_converges_and_eval_counts_every_example(trained_digits, tmp_path, capsys):
    # 500 steps of the main job's recipe on the real digits; eval batches of 7 divide nothing.
    # Then the predict command classifies held-out digits with the run's weights.
    workdir, final = trained_digits
    assert final['count'] == 360  # every held-out example, although 360 % 7 != 0
    assert final['accuracy'] >= 0.95, final
    records = Workdir(str(workdir)).read_metrics()
    assert [r['step'] for r in records if 'train_loss' in r] == list(range(100, 501, 100))
    assert records[-1]['eval_accuracy'] == final['accuracy']
    assert records[0]['train_loss'] > 3 * records[-2]['train_loss']
    assert os.listdir(workdir / 'tensorboard')
    assert json.loads((workdir / 'final_metrics.json').read_text())['count'] == 360

    # The run's weights.npz, read back by the predict command with the model's preprocessing.
    images, labels = digits.images_and_labels()
    held_out = digits.split_indices(labels)[1][:20]
    paths = []
    for i in held_out:
        paths.append(str(tmp_path / f'digit{i}.png'))
        Image.fromarray(images[i]).save(paths[-1])
    assert predict.main(['--workdir', str(workdir), '--top', '1', *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    top1 = [int(line.split('. ')[1].split(' ')[0]) for line in lines if line.startswith('  1. ')]
    assert len(top1) == 20
    assert np.mean(np.array(top1) == labels[held_out]) >= 0.9


def small_model_overrides():
    return [('model.embed_dim', '16'), ('model.depth', '1'), ('model.num_heads', '2'),
            ('batch', '32'), ('warmup_steps', '2'), ('progress_every', '5'),
            ('eval_every', '0'), ('checkpoint_every', '10')]


def test_checkpoints_restore_exactly_and_resume_at_the_right_step(tmp_path, digits_config,
                                                                  capsys):
    workdir = str(tmp_path)
    config = digits_config(*small_model_overrides(), ('total_steps', '20'))
    train(config, workdir)
    ckpt = Workdir(workdir).checkpointer(every=10, keep=3)
    assert ckpt.all_steps() == [10, 20]
    model = vit_jax.create_model(config.model_name, **config_lib.model_overrides(config),
                                 num_classes=10, img_size=16)
    tx = optim.create_optimizer(config)[0]
    template = step.create_train_state(model, tx, jax.random.PRNGKey(1), (1, 16, 16, 3))
    restored, run = ckpt.restore(template, config.model_name)
    assert int(restored.step) == 20 and run['examples_seen'] == 20 * 32
    # The restored state is the trained one, not the template: save it again and compare.
    assert not np.allclose(restored.params['head']['kernel'], template.params['head']['kernel'])
    ckpt2 = Workdir(str(tmp_path / 'copy')).checkpointer(every=1, keep=1)
    ckpt2.maybe_save(20, restored, run, force=True)
    ckpt2.close()
    again, _ = ckpt2.restore(template, config.model_name)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    ckpt.close()

    # A save cut short (orbax's temporary directory) is never taken as the latest checkpoint.
    os.makedirs(os.path.join(workdir, 'checkpoints', '25.orbax-checkpoint-tmp-1234', 'state'))
    assert Workdir(workdir).checkpointer(every=10, keep=3).latest_step() == 20

    capsys.readouterr()
    train(config_lib.apply_overrides(config, [('total_steps', '30')]), workdir)
    assert 'Resumed from' in capsys.readouterr().out
    steps = [r['step'] for r in Workdir(workdir).read_metrics() if 'train_loss' in r]
    assert steps == [5, 10, 15, 20, 25, 30]  # the second run continued at step 21
    assert Workdir(workdir).checkpointer(every=10, keep=3).latest_step() == 30


def test_cifar10_path_trains_one_step_under_mock_data(tmp_path, load_config):
    config = load_config(
        'vit.py:testing,cifar10', ('batch', '8'), ('batch_eval', '8'), ('accum_steps', '2'),
        ('pp.crop', '32'), ('total_steps', '1'), ('warmup_steps', '0'), ('shuffle_buffer', '16'))
    with tfds.testing.mock_data(num_examples=12):
        final = train(config, str(tmp_path))
    assert final['count'] == 12
    records = Workdir(str(tmp_path)).read_metrics()
    assert records[0]['step'] == 1 and np.isfinite(records[0]['train_loss'])


def tiny_vit():
    return vit_jax.create_model('testing', num_classes=4, img_size=16, patch_size=4,
                                drop_rate=0.0)


def random_batch(n=16, size=16, seed=0):
    rng = np.random.RandomState(seed)
    return {'image': jnp.asarray(rng.randn(n, size, size, 3), jnp.float32),
            'label': jnp.asarray(rng.randint(0, 4, n), jnp.int32)}


def test_gradient_accumulation_equals_the_full_batch():
    model, tx = tiny_vit(), optax.sgd(0.1, momentum=0.9)
    state = step.create_train_state(model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3))
    batch = random_batch()
    full = jax.jit(step.make_train_step(model, tx, options=step.StepOptions(accum_steps=1)))
    accum = jax.jit(step.make_train_step(model, tx, options=step.StepOptions(accum_steps=4)))
    s1, s4 = state, state
    for _ in range(3):
        s1, m1 = full(s1, batch)
        s4, m4 = accum(s4, batch)
    np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    assert int(s4.step) == 3


class ConvBN(nn.Module, contract.Family):
    """A model with mutable BatchNorm statistics, like the later convolutional families,
    declaring the family contract as the step expects."""

    num_classes: int = 4
    img_size: int = 16
    in_chans: int = 3
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))


@pytest.mark.parametrize('accum_steps', [1, 2])
def test_batchnorm_state_trains_through_the_same_step(accum_steps):
    model, tx = ConvBN(), optax.adam(3e-2)
    state = step.create_train_state(model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3))
    assert set(state.model_state) == {'batch_stats'}
    train_step = jax.jit(step.make_train_step(
        model, tx, options=step.StepOptions(accum_steps=accum_steps)))
    batch = random_batch()
    first = None
    for _ in range(60):
        state, m = train_step(state, batch)
        first = m['loss'] if first is None else first
    assert m['loss'] < 0.5 * first
    mean = state.model_state['batch_stats']['BatchNorm_0']['mean']
    assert np.abs(np.asarray(mean)).max() > 1e-3  # running statistics were updated
    sums = jax.jit(step.make_eval_step(model))(state, {**batch, 'mask': jnp.ones(16)})
    assert sums['count'] == 16


def test_learning_rate_schedule_warms_up_then_decays(digits_config):
    config = digits_config(('base_lr', '0.1'), ('warmup_steps', '10'), ('total_steps', '110'))
    lr = optim.learning_rate_schedule(config)
    np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                               [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)


def test_weight_decay_skips_biases_norms_and_embeddings():
    params = tiny_vit().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    mask = optim.decay_mask(type(tiny_vit()))(params)
    assert mask['head']['kernel'] and not mask['head']['bias']
    assert not mask['cls'] and not mask['Transformer']['posembed_input']['pos_embedding']
    assert not mask['Transformer']['encoder_norm']['scale']


def test_dataset_info_is_the_info_of_the_pipeline(digits_config, load_config):
    # The trainer learns the class count from `dataset_info` before it builds the pipeline.
    from vit_jax.data import create_datasets, dataset_info
    config = digits_config()
    assert dataset_info(config) == create_datasets(config)[2]
    cifar = load_config('vit.py:testing,cifar10')
    with tfds.testing.mock_data(num_examples=12):
        assert dataset_info(cifar) == create_datasets(cifar)[2]
        assert dataset_info(cifar).num_classes == 10
