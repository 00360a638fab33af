"""Bad input as a new user would give it: each is a one-line error naming what to change.

The other rows of the bad-input table (docs/bad-input.md) are tested beside their code
(test_config, test_models, test_data, test_scale); these are the weights, mesh, batch-split and
workdir rows.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import vit_jax
from vit_jax import weights
from vit_jax.errors import ConfigError, ModelError
from vit_jax.train import sharding, step
from vit_jax.workdir import Workdir


def tiny(**overrides):
    return vit_jax.create_model('testing', **{'num_classes': 4, 'img_size': 8,
                                              'patch_size': 4, **overrides})


def saved(model, path):
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, 3))))()
    weights.save_npz(variables, path)
    return path


def test_num_classes_mismatch_on_strict_load(tmp_path):
    path = saved(tiny(num_classes=10), tmp_path / 'ten.npz')
    with pytest.raises(ModelError, match=r'params/head/bias has shape \(10,\) in the checkpoint '
                                         r'but \(4,\).*load with strict=False to re-initialise'):
        weights.load(tiny(), path, strict=True)
    assert weights.load(tiny(), path)['params']['head']['kernel'].shape == (10, 4)  # not strict


def test_weights_of_another_family(tmp_path):
    foreign = {'stem.conv.weight': np.zeros((8, 3, 3, 3)), 'stages.0.norm.weight': np.zeros(8)}
    with pytest.raises(ModelError, match='not a VisionTransformer checkpoint in a layout'):
        weights.load(tiny(), foreign)


def test_weights_of_another_model_size(tmp_path):
    path = saved(tiny(embed_dim=12), tmp_path / 'wide.npz')
    with pytest.raises(ModelError, match='in the checkpoint but .* in the VisionTransformer; it '
                                         'was saved from another model size or family'):
        weights.load(tiny(), path)


def test_corrupt_npz(tmp_path):
    path = saved(tiny(), tmp_path / 'w.npz')
    path.write_bytes(path.read_bytes()[:200])  # a download cut short
    with pytest.raises(ModelError, match="is not a checkpoint vit_jax can read"):
        weights.load(tiny(), path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelError, match="weights file '.*nope.npz' does not exist"):
        weights.load(tiny(), tmp_path / 'nope.npz')


@pytest.mark.parametrize('name, size, devices, accum, message', [
    ('batch', 36, 8, 1, r'--config.batch=36 does not split over 8 devices; use a multiple of 8'),
    ('batch', 64, 8, 16, r'--config.batch=64 / --config.accum_steps=16 = 4 per micro-batch does '
                         r'not split over 8 devices; use a multiple of 128'),
    ('batch_eval', 100, 8, 1, r'--config.batch_eval=100 does not split over 8 devices'),
])
def test_batch_that_does_not_split_over_the_devices(name, size, devices, accum, message):
    with pytest.raises(ConfigError, match=message):
        sharding.check_batch_size(name, size, devices, accum)


def test_mesh_that_does_not_match_the_devices():
    with pytest.raises(ConfigError, match=r"--config.mesh=\[\('data', 3\)\] needs 3 devices but "
                                          r'there are 8; make the sizes multiply to 8'):
        sharding._axis_sizes([('data', 3)], 8)


def test_workdir_holding_another_models_checkpoints(tmp_path):
    tx = optax.sgd(0.1)
    state = step.create_train_state(tiny(embed_dim=12), tx, jax.random.key(0), (1, 8, 8, 3))
    ckpt = Workdir(str(tmp_path)).checkpointer(every=1, keep=1)
    ckpt.maybe_save(1, state, {'model_name': 'ViT-B_16', 'examples_seen': 8})
    ckpt.close()
    other = step.create_train_state(tiny(), tx, jax.random.key(0), (1, 8, 8, 3))
    with pytest.raises(ConfigError, match=r"--workdir holds checkpoints of another model "
                                          r"\('ViT-B_16': .* is \(12,\) there, \(10,\) in "
                                          r"'testing'\); use a new --workdir"):
        Workdir(str(tmp_path)).checkpointer(every=1, keep=1).restore(other, 'testing')


def test_cli_batch_not_divisible_by_eight_devices_is_one_line(tmp_path, repo, config_spec):
    out = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', '--config=' + config_spec('digits.py'),
         f'--workdir={tmp_path}', '--config.batch=36', f'--config.tfds_data_dir={tmp_path}'],
        capture_output=True, text=True, timeout=300, cwd=repo,
        env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert errors == ['error: --config.batch=36 does not split over 8 devices; use a multiple '
                      'of 8'], out.stderr
    assert 'Traceback' not in out.stderr
