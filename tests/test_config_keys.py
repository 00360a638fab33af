"""The declared config keys (vit_jax/train/config_keys.py): every key a config can hold is
declared once and checked by `validate` from its declaration; the run record's may-change list
and the config reference come from the same declarations."""

import re

import pytest

from vit_jax import config as config_lib
from vit_jax.errors import ConfigError
from vit_jax.train import config_keys, record
from vit_jax.train.config_keys import KEYS


def flat_keys(config) -> set[str]:
    return {k for k in record.flat_config(config) if not k.startswith('model.')}


def outside(key: config_keys.Key):
    """A value of `key`'s type that its choices or bounds refuse."""
    if key.choices is not None:
        return 'nope' if key.type is str else -12345
    if key.bounds == 'probability':
        return 1.5
    if key.bounds.startswith('>'):
        return key.type(0 if key.bounds == '> 0' else -1)
    low, high = re.findall(r'[-\d.]+', key.bounds)
    return key.type(float(high) + 1)


def test_every_key_of_every_packaged_config_is_declared(config_spec):
    declared = {key.name for key in KEYS}
    assert len(declared) == len(KEYS)
    for spec in ('digits.py', 'vit.py:b16,cifar10', 'vit_i1k.py', 'swin.py:tiny,cifar10',
                 'convnext.py:tiny,cifar10', 'dhvt.py', 'sret.py'):
        config = config_lib.load_config(config_spec(spec))
        assert flat_keys(config) == declared, spec
        if config.pretrained == '':
            config = config_lib.apply_overrides(config, [('pretrained', 'w.npz')])
        config_lib.validate(config)


@pytest.mark.parametrize('key', [k for k in KEYS if k.choices or k.bounds], ids=lambda k: k.name)
def test_each_declared_bound_is_checked(key):
    config = config_lib.base_config()
    node, leaf = config, key.name.split('.')
    for part in leaf[:-1]:
        node = node[part]
    bad = outside(key)
    with node.unlocked():
        node[leaf[-1]] = bad
    with pytest.raises(ConfigError, match=rf'^--config\.{re.escape(key.name)}\b') as error:
        config_lib.validate(config)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('key, value', [('batch', '512'), ('base_lr', True), ('pp.flip', 1),
                                        ('dataset', 3)])
def test_a_value_of_the_wrong_type_set_by_a_config_file_is_one_line(key, value):
    config = config_lib.base_config()
    node, parts = config, key.split('.')
    for part in parts[:-1]:
        node = node[part]
    node._fields[parts[-1]] = value  # as a config file building its own ConfigDict may
    with pytest.raises(ConfigError, match=rf'^--config\.{re.escape(key)}={value!r} must be a '):
        config_lib.validate(config)


def test_the_record_and_the_reference_come_from_the_declarations():
    record.check_changes({name: (1, 2) for name in config_keys.MAY_CHANGE}, 'runs/x')
    with pytest.raises(ConfigError, match=r'base_lr=1 there, 2 here'):
        record.check_changes({'base_lr': (1, 2), 'total_steps': (1, 2)}, 'runs/x')
    assert set(config_keys.MAY_CHANGE) == {
        'total_steps', 'eval_every', 'progress_every', 'checkpoint_every', 'keep_checkpoints',
        'batch_eval', 'input_threads', 'shuffle_buffer', 'tfds_data_dir', 'mesh',
        'param_sharding', 'fsdp_min_size', 'accum_steps', 'pretrained', 'init_from',
        'skip_bad_images'}
    rows = config_keys.reference().splitlines()[2:]
    assert [row.split('`')[1] for row in rows] == [key.name for key in KEYS]
    assert all(row.count(' | ') == 4 for row in rows)  # a `|` in a doc is escaped
