"""Config files, command-line overrides and their one-line errors."""

import os
import subprocess
import sys

import pytest

from vit_jax import config as config_lib
from vit_jax import main as cli
from vit_jax.errors import ConfigError, ModelError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, 'configs', 'digits.py')


def load(spec=DIGITS, *overrides):
    return config_lib.apply_overrides(config_lib.load_config(spec), overrides)


def test_overrides_parse_as_the_keys_type():
    c = load(DIGITS, ('batch', '64'), ('base_lr', '0.5'), ('pp.flip', 'true'),
             ('pp.augment', 'none'), ('model.depth', '3'), ('model.representation_size', '8'),
             ('tfds_data_dir', '/data'))
    assert (c.batch, c.base_lr, c.pp.flip, c.pp.augment) == (64, 0.5, True, 'none')
    assert (c.model.depth, c.model.representation_size, c.tfds_data_dir) == (3, 8, '/data')
    assert config_lib.model_overrides(c)['depth'] == 3


@pytest.mark.parametrize('key, message', [
    ('bacth', r'unknown config key --config.bacth; did you mean --config.batch\?'),
    ('pp.crops', r'unknown config key --config.pp.crops; did you mean --config.pp.crop\?'),
    ('model.embed_dims', r'did you mean --config.model.embed_dim\?'),
    ('batch.size', r'unknown config key --config.batch.size'),
])
def test_unknown_key_names_it_and_the_close_key(key, message):
    with pytest.raises(ConfigError, match=message):
        load(DIGITS, (key, '1'))


@pytest.mark.parametrize('key, value, message', [
    ('batch', 'abc', r"--config.batch='abc' is not a valid int"),
    ('base_lr', 'fast', r"--config.base_lr='fast' is not a valid float"),
    ('pp.flip', 'maybe', r"--config.pp.flip='maybe' is not a valid bool"),
    ('model.depth', '2.5', r"--config.model.depth='2.5' is not a valid int"),
])
def test_bad_value_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load(DIGITS, (key, value))


@pytest.mark.parametrize('key, value, message', [
    ('optimizer', 'lamb', r"--config.optimizer='lamb' is not supported; choose one of"),
    ('batch', '0', r'--config.batch must be > 0'),
    ('accum_steps', '3', r'--config.batch=128 is not divisible by --config.accum_steps=3'),
    ('warmup_steps', '5000', r'--config.warmup_steps=5000 must be smaller than'),
    ('pp.augment', 'randaug', r"--config.pp.augment='randaug' is not supported"),
    ('pp.normalize', 'zero_one', r"--config.pp.normalize='zero_one' is not supported; choose one "
                                 r"of \('minus_one_one', 'imagenet'\)"),
    ('pp.randaug_magnitude', '11', r'--config.pp.randaug_magnitude must be in \[0, 10\], got 11'),
    ('pp.randaug_layers', '-1', r'--config.pp.randaug_layers must be >= 0, got -1'),
    ('pp.erase_prob', '1.5', r'--config.pp.erase_prob must be in \[0.0, 1.0\], got 1.5'),
    ('pp.repeated_aug', '0', r'--config.pp.repeated_aug must be > 0, got 0'),
    ('mixup_alpha', '-0.1', r'^--config.mixup_alpha must be >= 0, got -0.1$'),
    ('cutmix_alpha', '-1', r'^--config.cutmix_alpha must be >= 0, got -1.0$'),
    ('mix_prob', '1.5', r'^--config.mix_prob is a probability: it must be in \[0, 1\], got 1.5$'),
    ('mix_switch_prob', '-0.5', r'^--config.mix_switch_prob is a probability'),
    ('ema_decay', '1', r'^--config.ema_decay must be in \[0, 1\) \(0 = no moving average; DeiT '
                       r'uses 0.99996\), got 1.0$'),
    ('ema_decay', '-0.9', r'^--config.ema_decay must be in \[0, 1\)'),
])
def test_values_that_cannot_work_fail_validation(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(load(DIGITS, (key, value)))


def test_unknown_model_name_fails_validation():
    with pytest.raises(ModelError, match="unknown model 'ViT-B_17'; did you mean ViT-B_16"):
        config_lib.validate(load(DIGITS, ('model_name', 'ViT-B_17')))


def test_config_file_errors():
    with pytest.raises(ConfigError, match="config file 'nope.py' does not exist"):
        config_lib.load_config('nope.py')


def test_vit_config_follows_the_original_recipe():
    c = config_lib.load_config(os.path.join(REPO, 'configs', 'vit.py') + ':b16,cifar10')
    assert c.model_name == 'ViT-B_16' and c.dataset == 'cifar10'
    assert (c.batch, c.optimizer, c.momentum, c.base_lr, c.warmup_steps) == (512, 'sgd', 0.9,
                                                                             0.01, 500)
    assert (c.grad_norm_clip, c.decay_type, c.pp.crop, c.pp.train) == (1.0, 'cosine', 384,
                                                                       'train[:98%]')
    s32 = config_lib.load_config(os.path.join(REPO, 'configs', 'vit.py') + ':s32,cifar100')
    assert s32.model_name == 'ViT-S_32' and s32.base_lr == 0.03
    config_lib.validate(c)
    hybrid = config_lib.load_config(os.path.join(REPO, 'configs', 'vit.py') + ':r50_b16,'
                                    'imagenet2012')
    assert hybrid.model_name == 'R50+ViT-B_16'
    assert (hybrid.total_steps, hybrid.pp.train, hybrid.pp.test) == (20_000, 'train[:99%]',
                                                                     'validation')
    assert c.pretrained is None
    with pytest.raises(ConfigError, match="unknown model 'b17'"):
        config_lib.load_config(os.path.join(REPO, 'configs', 'vit.py') + ':b17,cifar10')


def test_cli_parses_both_override_forms():
    args, overrides = cli.parse_args(['--config=c.py:x', '--workdir', 'w', '--config.batch=8',
                                      '--config.pp.crop', '32'])
    assert (args.config, args.workdir) == ('c.py:x', 'w')
    assert overrides == [('batch', '8'), ('pp.crop', '32')]


@pytest.mark.parametrize('args, message', [
    (['--config.bacth=64'],
     'error: unknown config key --config.bacth; did you mean --config.batch?'),
    (['--config.model_name=ViT-B_17'], "error: unknown model 'ViT-B_17'; did you mean ViT-B_16"),
    (['--config.pp.crop=18'], 'error: img_size=18 does not fit patch_size=4'),
])
def test_cli_reports_bad_input_as_one_line(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', f'--config={DIGITS}', f'--workdir={tmp_path}',
         f'--config.tfds_data_dir={tmp_path / "tfds"}', *args],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert 'Traceback' not in out.stderr


def test_config_file_mistakes_name_the_file_and_line(tmp_path):
    # Issue 14, point 7: the config file's own line, not our stack.
    broken = tmp_path / 'broken.py'
    broken.write_text('import ml_collections\n\ndef get_config(:\n    pass\n')
    with pytest.raises(ConfigError, match=rf'^{broken}:3: invalid syntax; fix the config file$'):
        config_lib.load_config(str(broken))
    raising = tmp_path / 'raising.py'
    raising.write_text('def get_config(arg):\n    size, dataset = arg.split(",")\n')
    with pytest.raises(ConfigError, match=rf"^{raising}:2: get_config\('tiny'\) failed "
                                          r'\(ValueError: not enough values to unpack'):
        config_lib.load_config(f'{raising}:tiny')
    with pytest.raises(ConfigError, match=r"digits.py: get_config\('x'\) failed \(TypeError"):
        config_lib.load_config(os.path.join(REPO, 'configs', 'digits.py') + ':x')


@pytest.mark.parametrize('spec', ['swin.py:tiny', 'convnext.py:tiny'])
def test_family_configs_take_a_size_alone(spec):
    config = config_lib.load_config(os.path.join(REPO, 'configs', spec))
    assert config.dataset == 'cifar10'
