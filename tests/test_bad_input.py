"""Bad input as a new user would give it: each is a one-line error naming what to change.

The other rows of the bad-input table (docs/bad-input.md) are tested beside their code
(test_config, test_models, test_data, test_scale); these are the weights, mesh, batch-split and
workdir rows.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from trees import tree_bytes

import vit_jax
from vit_jax import weights
from vit_jax.errors import ConfigError, ModelError, VitJaxError
from vit_jax.train import sharding, step
from vit_jax.train.workdir import Workdir


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


# Issue 27: foreign files, every CLI, config files.

@pytest.fixture(scope='module')
def hf_saved(tmp_path_factory):
    """A Hugging Face directory `save_hf` wrote (a one-block ViT), and the model it holds."""
    model = vit_jax.create_model('ViT-Ti_16', num_classes=3, img_size=32, depth=1)
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))()
    directory = tmp_path_factory.mktemp('hf') / 'hf'
    weights.save_hf(model, variables, directory)
    return directory, model, variables


@pytest.fixture
def hf_dir(hf_saved, tmp_path):
    """`hf_saved`, copied for this test to change."""
    shutil.copytree(hf_saved[0], tmp_path / 'hf')
    return tmp_path / 'hf', *hf_saved[1:]


def test_save_hf_output_reads_back_as_the_same_model(hf_dir):
    directory, model, variables = hf_dir
    again = weights.hf_model(directory)
    images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    np.testing.assert_allclose(again.apply(weights.load(again, directory, strict=True), images),
                               model.apply(variables, images), atol=1e-5)


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize('damage, message', [
    (lambda d: (d / 'config.json').write_text('{"model_type": '),
     r"config.json' is not valid JSON"),
    (lambda d: (d / 'config.json').write_text('[1]'),
     r"config.json' holds no config \(a JSON list"),
    (lambda d: edit_json(d / 'config.json', hidden_size=-192),
     r"config.json' gives embed_dim=-192, which a model cannot have"),
    (lambda d: edit_json(d / 'config.json', num_hidden_layers=0), r'gives depth=0'),
    (lambda d: edit_json(d / 'config.json', hidden_size=0),
     r"config.json' gives hidden_size=0, which a model cannot have; download or save the model "
     r'again$'),
    (lambda d: edit_json(d / 'config.json', image_size='32'), r"gives img_size='32'"),
    (lambda d: edit_json(d / 'config.json', patch_size=16.0), r'gives patch_size=16.0'),
    (lambda d: edit_json(d / 'config.json', intermediate_size=None),
     r"config.json' is no vit config vit_jax reads \(TypeError"),
    (lambda d: edit_json(d / 'config.json', model_type=['vit']),
     r"holds a Hugging Face \['vit'\] model"),
    (lambda d: shard(d, '../outside.safetensors'),
     r"index.json' names shard files outside its directory \('../outside.safetensors'\)"),
    (lambda d: shard(d, str(d.parent / 'outside.safetensors')), r'outside its directory'),
    (lambda d: shard(d, None), r"index.json' has no weight_map of array names to shard files"),
])
def test_a_damaged_hugging_face_directory_is_one_line(hf_dir, damage, message):
    directory = hf_dir[0]
    damage(directory)
    before = tree_bytes(directory.parent)
    with pytest.raises(ModelError, match=message):
        weights.load(weights.hf_model(directory), directory)
    assert tree_bytes(directory.parent) == before


def shard(directory, name):
    """`directory` as a sharded save whose index maps every array to `name`."""
    arrays = list(weights.read(directory))
    os.rename(directory / 'model.safetensors', directory.parent / 'outside.safetensors')
    (directory / 'model.safetensors.index.json').write_text(json.dumps(
        {'weight_map': dict.fromkeys(arrays, name)} if name else {'metadata': {}}))


def test_weights_holding_nan_are_refused(tmp_path):
    arrays = dict(np.load(saved(tiny(), tmp_path / 'w.npz')))
    arrays['Transformer/encoder_norm/scale'] = arrays['Transformer/encoder_norm/scale'] * np.nan
    np.savez(tmp_path / 'nan.npz', **arrays)
    with pytest.raises(ModelError, match=r'^params/Transformer/encoder_norm/scale holds NaN or '
                                         r'infinite values in the checkpoint; it was saved from '
                                         r'a diverged run'):
        weights.load(tiny(), tmp_path / 'nan.npz')


def test_predict_refuses_bad_options_and_class_files(tmp_path, capsys):
    from vit_jax import predict

    for flag in (['--top', '0'], ['--img_size', '-8']):
        with pytest.raises(SystemExit):
            predict.main(['--workdir', str(tmp_path), 'x.png', *flag])
        assert f'error: {flag[0]} must be 1 or more, got {flag[1]}' in capsys.readouterr().err
    (tmp_path / 'classes.txt').write_bytes(b'\xffcat\n')
    with pytest.raises(VitJaxError, match=r'classes.txt is not UTF-8 text; save the class names'):
        predict.class_names(1, str(tmp_path / 'classes.txt'))
    with pytest.raises(VitJaxError, match=r'Is a directory; give a file, not a folder, as '
                                          r'--classes$'):
        predict.class_names(1, str(tmp_path))
    with pytest.raises(VitJaxError, match=r'Not a directory; a part of the path is a file, not a '
                                          r'folder: fix --classes$'):
        predict.class_names(1, str(tmp_path / 'classes.txt' / 'names.txt'))


@pytest.mark.parametrize('text, message', [
    ('import no_such_module_xyz\n', r":1: failed to load \(ModuleNotFoundError: No module named "
                                    r"'no_such_module_xyz'\); fix the config file"),
    ('x = 1\nraise RuntimeError("boom")\n', r':2: failed to load \(RuntimeError: boom\)'),
])
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, text, message):
    from vit_jax import config as config_lib

    (tmp_path / 'c.py').write_text(text)
    with pytest.raises(ConfigError, match=rf'^{tmp_path}/c.py{message}'):
        config_lib.load_config(str(tmp_path / 'c.py'))


def test_a_config_without_keys_of_base_config_is_one_line():
    from vit_jax import config as config_lib

    config = config_lib.base_config()
    del config['pp'], config['optimizer']
    with pytest.raises(ConfigError, match=r'^the config has no optimizer, pp; build it on '
                                          r'vit_jax.config.base_config\(\)'):
        config_lib.validate(config)
