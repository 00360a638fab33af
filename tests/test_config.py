"""Config files, command-line overrides and their one-line errors."""

import shutil
import subprocess
import sys

import pytest

from vit_jax import config as config_lib
from vit_jax import list_models
from vit_jax import main as cli
from vit_jax.configs import common
from vit_jax.errors import ConfigError, ModelError
from vit_jax.train.loop import train


def test_overrides_parse_as_the_keys_type(load_config):
    c = load_config('digits.py', ('batch', '64'), ('base_lr', '0.5'), ('pp.flip', 'true'),
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
def test_unknown_key_names_it_and_the_close_key(load_config, key, message):
    with pytest.raises(ConfigError, match=message):
        load_config('digits.py', (key, '1'))


@pytest.mark.parametrize('key, value, message', [
    ('batch', 'abc', r"--config.batch='abc' is not a valid int"),
    ('base_lr', 'fast', r"--config.base_lr='fast' is not a valid float"),
    ('pp.flip', 'maybe', r"--config.pp.flip='maybe' is not a valid bool"),
    ('model.depth', '2.5', r"--config.model.depth='2.5' is not a valid int"),
])
def test_bad_value_names_the_key(load_config, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config('digits.py', (key, value))


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
    ('layer_decay', '0', r'^--config.layer_decay must be in \(0, 1\] \(1 = no decay; BEiT uses '
                         r'0.65\), got 0.0$'),
    ('loss', 'hinge', r"^--config.loss='hinge' is not supported; choose one of "
                      r"\('softmax_xent', 'sigmoid_xent'\)"),
])
def test_values_that_cannot_work_fail_validation(load_config, key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(load_config('digits.py', (key, value)))


def test_unknown_model_name_fails_validation(load_config):
    with pytest.raises(ModelError, match="unknown model 'ViT-B_17'; did you mean ViT-B_16"):
        config_lib.validate(load_config('digits.py', ('model_name', 'ViT-B_17')))


def test_config_file_errors():
    with pytest.raises(ConfigError, match="config file 'nope.py' does not exist; .* packaged "
                                          "configs/ablations/dhvt_small_data.py, .*configs/vit.py"):
        config_lib.load_config('nope.py')
    with pytest.raises(ConfigError, match="config file 'configs/nope.py' does not exist"):
        config_lib.load_config('configs/nope.py')


def test_packaged_configs_load_from_any_directory(tmp_path, monkeypatch, config_spec):
    monkeypatch.chdir(tmp_path)
    packaged = config_lib.load_config('configs/vit.py:b16,cifar10')
    assert packaged.to_dict() == config_lib.load_config(config_spec('vit.py:b16,cifar10')).to_dict()
    assert config_lib.load_config('configs/ablations/vit_small_data.py').axes
    (tmp_path / 'configs').mkdir()  # a file of the user's at that path comes first
    (tmp_path / 'configs' / 'vit.py').write_text(
        'from vit_jax.config import base_config\n\n\ndef get_config():\n'
        '    c = base_config()\n    c.batch = 24\n    return c.lock()\n')
    assert config_lib.load_config('configs/vit.py').batch == 24


def test_vit_config_follows_the_original_recipe(load_config):
    c = load_config('vit.py:b16,cifar10')
    assert c.model_name == 'ViT-B_16' and c.dataset == 'cifar10'
    assert (c.batch, c.optimizer, c.momentum, c.base_lr, c.warmup_steps) == (512, 'sgd', 0.9,
                                                                             0.01, 500)
    assert (c.grad_norm_clip, c.decay_type, c.pp.crop, c.pp.train) == (1.0, 'cosine', 384,
                                                                       'train[:98%]')
    s32 = load_config('vit.py:s32,cifar100')
    assert s32.model_name == 'ViT-S_32' and s32.base_lr == 0.03
    config_lib.validate(c)
    hybrid = load_config('vit.py:r50_b16,imagenet2012')
    assert hybrid.model_name == 'R50+ViT-B_16'
    assert (hybrid.total_steps, hybrid.pp.train, hybrid.pp.test) == (20_000, 'train[:99%]',
                                                                     'validation')
    assert c.pretrained is None
    with pytest.raises(ConfigError, match="unknown model 'b17'"):
        load_config('vit.py:b17,cifar10')


def test_cli_parses_both_override_forms():
    args, overrides = cli.parse_args(['--config=c.py:x', '--workdir', 'w', '--config.batch=8',
                                      '--config.pp.crop', '32'])
    assert (args.config, args.workdir) == ('c.py:x', 'w')
    assert overrides == [('batch', '8'), ('pp.crop', '32')]


@pytest.mark.parametrize('spec, args, message', [
    ('digits.py', ['--config.bacth=64'],
     'error: unknown config key --config.bacth; did you mean --config.batch?'),
    ('digits.py', ['--config.model_name=ViT-B_17'],
     "error: unknown model 'ViT-B_17'; did you mean ViT-B_16"),
    ('digits.py', ['--config.pp.crop=18'], 'error: img_size=18 does not fit patch_size=4'),
    ('digits.py:x', [], "error: config file '{configs}digits.py' takes no argument, got 'x'; "
                        "pass --config={configs}digits.py"),
    ('swin.py:tiny,cifar10,fx', [], "error: config argument 'tiny,cifar10,fx': 'fx' is one "
                                    "value too many; pass MODEL,DATASET[,ft] or "
                                    "model=...,dataset=...[,ft=true]"),
    ('convnext.py:tiny,digits,ft', [], 'error: this config fine-tunes loaded weights: pass '
                                       '--config.pretrained=PATH'),
])
def test_cli_reports_bad_input_as_one_line(tmp_path, repo, config_spec, spec, args, message):
    message = message.format(configs=config_spec(''))
    out = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', '--config=' + config_spec(spec),
         f'--workdir={tmp_path}', f'--config.tfds_data_dir={tmp_path / "tfds"}', *args],
        capture_output=True, text=True, timeout=300, cwd=repo)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert 'Traceback' not in out.stderr


@pytest.mark.parametrize('positional, keywords, name', [
    ('vit.py:b16,cifar100', 'vit.py:model=b16,dataset=cifar100', 'ViT-B_16'),
    ('vit.py:ti16-gap-norep,digits', 'vit.py:dataset=digits,model=ViT-Ti_16-gap-norep',
     'ViT-Ti_16-gap-norep'),
    ('vit.py:r_ti16', 'vit.py:model=R+ViT-Ti_16,dataset=cifar10', 'R+ViT-Ti_16'),
    ('swin.py:base384,imagenet2012,ft', 'swin.py:model=base384,dataset=imagenet2012,ft=true',
     'swin_base_patch4_window12_384'),
    ('swin.py:tiny', 'swin.py:dataset=cifar10,model=swin_tiny_patch4_window7_224,ft=false',
     'swin_tiny_patch4_window7_224'),
    ('convnext.py:small,cifar10,ft', 'convnext.py:model=convnext_small,ft=1,dataset=cifar10',
     'convnext_small'),
    ('convnext.py:tiny', 'convnext.py', 'convnext_tiny'),
    ('dhvt.py:small_cifar_patch2,digits', 'dhvt.py:model=dhvt_small_cifar_patch2,dataset=digits',
     'dhvt_small_cifar_patch2'),
    ('sret.py:light_tiny_wo_slice,cifar100', 'sret.py:model=SReT_LT_wo_slice,dataset=cifar100',
     'SReT_LT_wo_slice'),
    ('sret.py:small_distill', 'sret.py:model=SReT_S_distill', 'SReT_S_distill'),
    ('vit.py:g14,imagenet2012', 'vit.py:model=ViT-g_14,dataset=imagenet2012', 'ViT-g_14'),
    ('vit.py:G14,imagenet2012', 'vit.py:model=ViT-G_14,dataset=imagenet2012', 'ViT-G_14'),
])
def test_config_arguments_by_place_by_key_and_by_registered_name_agree(load_config, positional,
                                                                        keywords, name):
    by_place, by_key = load_config(positional), load_config(keywords)
    assert by_place.model_name == name
    assert by_place.to_json() == by_key.to_json()


@pytest.mark.parametrize('family', sorted(common.FAMILIES))
def test_every_registered_model_has_its_own_short_name(family):
    names = [n for p in common.FAMILIES[family].patterns for n in list_models(p)]
    assert sorted(common.short_names(family).values()) == sorted(set(names))


@pytest.mark.parametrize('spec, message', [
    ('vit.py:size=b16', "config argument 'size=b16': 'size' is not one of its keys; pass "
                        "MODEL,DATASET or model=...,dataset=...$"),
    ('swin.py:tiny,cifar10,ft,ft', "config argument 'tiny,cifar10,ft,ft': 'ft' is given twice; "
                                   r"pass MODEL,DATASET\[,ft\] or "
                                   r"model=...,dataset=...\[,ft=true\]$"),
    ('convnext.py:tiny,ft=maybe', "ft='maybe' is not true or false; pass MODEL,DATASET"),
    ('dhvt.py:tiny_cifar_patch4,cifar10,x', "'x' is one value too many; pass MODEL,DATASET or"),
    ('sret.py:dataset=digits,dataset=cifar10', "'dataset' is given twice; pass MODEL,DATASET"),
    ('vit.py:b17', "^unknown model 'b17' for ViT; choose one of b16, b16-gap-norep, .*r50_b16"),
    ('swin.py:huge', "^unknown model 'huge' for Swin; choose one of base384, base, .*tiny "
                     r"\(or a registered name, e.g. swin_base_patch4_window12_384\)$"),
    ('convnext.py:swin_tiny_patch4_window7_224', "^unknown model 'swin_tiny_patch4_window7_224' "
                                                 "for ConvNeXt; choose one of base, large"),
    ('sret.py:medium', "^unknown model 'medium' for SReT; choose one of light_tiny, "),
    ('ablations/vit_small_data.py:quick', "^config file '.*vit_small_data.py' takes no argument"),
])
def test_bad_config_argument_is_one_line_naming_the_forms(load_config, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(spec)


def test_dataset_table_gives_the_splits_and_sizes(load_config):
    # The original recipe trains on train[:98%] of CIFAR (49,000 images), train[:99%] of
    # ImageNet, train[:90%] of the pets; the DeiT recipes on the whole split.
    swin = {d: load_config(f'swin.py:tiny,{d}') for d in ('cifar100', 'imagenet2012',
                                                            'oxford_iiit_pet', 'my_folder')}
    assert [(c.pp.train, c.pp.test, c.total_steps) for c in swin.values()] == [
        ('train[:98%]', 'test', 300 * 49_000 // 1024),
        ('train[:99%]', 'validation', 300 * 1_268_355 // 1024),
        ('train[:90%]', 'test', 300 * 3_312 // 1024),
        ('train', 'test', 300 * 50_000 // 1024)]
    sret = load_config('sret.py:tiny,cifar100')
    assert (sret.pp.train, sret.total_steps) == ('train', 300 * 50_000 // 1024)
    dhvt = load_config('dhvt.py:tiny_cifar_patch4,digits')
    assert (dhvt.pp.test, dhvt.total_steps) == ('test', -(-300 * 1_437 // 128))


def test_fine_tune_config_without_weights_fails_before_writing(load_config, tmp_path):
    config = load_config('swin.py:tiny,digits,ft')
    workdir = tmp_path / 'run'
    with pytest.raises(ConfigError, match=r'^this config fine-tunes loaded weights: pass '
                                          r'--config.pretrained=PATH \(an original'):
        train(config, str(workdir))
    assert not workdir.exists()
    config_lib.validate(config_lib.apply_overrides(config, [('pretrained', 'w.npz')]))


def test_a_config_folder_loads_from_anywhere(tmp_path, monkeypatch, config_spec):
    # Config files import their neighbour `common.py` wherever the folder is, from any cwd.
    copy = shutil.copytree(config_spec(''), tmp_path / 'my_configs')
    monkeypatch.chdir(tmp_path)
    c = config_lib.load_config(f'{copy}/vit.py:r50_b16,imagenet2012')
    assert (c.model_name, c.pp.train) == ('R50+ViT-B_16', 'train[:99%]')
    assert config_lib.load_config('my_configs/swin.py:tiny').model_name == \
        'swin_tiny_patch4_window7_224'


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

