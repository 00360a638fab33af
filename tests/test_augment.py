"""The augmentations in the tf.data pipeline: normalisation, repeated augmentation, RandAugment
and erasing in the train stream (a fixed function of the seed, resumable), and training with
them."""

import collections

import numpy as np
import pytest
from test_data import make_config

from vit_jax.data import create_datasets, digits
from vit_jax.normalization import NORMALIZATIONS, normalize


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    digits.prepare(data_dir)
    return data_dir


def examples(config, count: int, start: int = 0) -> np.ndarray:
    train = create_datasets(config, start)[0]
    return np.concatenate([next(train)['image'] for _ in range(count // config.batch)])


def test_imagenet_normalisation_in_train_and_eval(digits_dir):
    config = make_config(data_dir=digits_dir)
    plain = examples(config, 32), next(create_datasets(config)[1]())['image']
    config.pp.normalize = 'imagenet'
    imagenet = examples(config, 32), next(create_datasets(config)[1]())['image']
    for a, b in zip(plain, imagenet, strict=True):
        pixels = a * 127.5 + 127.5
        np.testing.assert_allclose(b, normalize(pixels, **NORMALIZATIONS['imagenet']), atol=1e-5)
    assert np.abs(imagenet[0].mean((0, 1, 2))).max() < 1.5


def test_repeated_augmentation_copies_each_example_apart_with_new_augmentations(digits_dir):
    copies, num_train = 3, 1437
    config = make_config(data_dir=digits_dir)
    config.batch = 9  # 1437 * 3 = 4311 = 479 batches of 9
    config.pp.repeated_aug = copies
    plain = examples(config, copies * num_train)  # no augmentation: identifies the examples
    keys = [image.tobytes() for image in plain]
    one_pass = make_config(data_dir=digits_dir)
    one_pass.batch = num_train // 3
    # Some digits occur twice in the data.
    once = collections.Counter(image.tobytes() for image in examples(one_pass, num_train))
    assert collections.Counter(keys) == {key: copies * n for key, n in once.items()}
    # Copies are spread out: in batches of 32, few examples come twice.
    repeats = [32 - len(set(keys[i:i + 32])) for i in range(0, len(keys) - 31, 32)]
    assert np.mean(repeats) < 1, repeats
    # The same positions with augmentation: each copy augmented on its own.
    config.pp.update(augment='pad_crop', pad=2, randaug_layers=2)
    augmented = examples(config, 1000)
    positions = collections.defaultdict(list)
    for i, key in enumerate(keys[:len(augmented)]):
        positions[key].append(i)
    pairs = [p for p in positions.values() if len(p) > 1]
    assert len(pairs) > 10
    # Independent draws: a copy matches another only when both draw the same crop offset (1/25)
    # and both skip RandAugment's ops (1/16), or the like: rare, never most.
    same = sum(np.array_equal(augmented[p[0]], augmented[p[1]]) for p in pairs)
    assert same <= len(pairs) // 20, (same, len(pairs))


@pytest.mark.slow
def test_augmented_stream_is_a_function_of_the_seed_and_resumes_exactly(digits_dir):
    config = make_config(data_dir=digits_dir)
    config.pp.update(augment='inception', flip=True, crop=12, randaug_layers=2,
                     erase_prob=0.5, repeated_aug=3, normalize='imagenet')
    full = examples(config, 5 * 16)
    np.testing.assert_array_equal(examples(config, 5 * 16), full)
    np.testing.assert_array_equal(examples(config, 2 * 16, start=3 * 16), full[3 * 16:])
    config.pp.erase_prob = 1.0  # erased boxes are standard-normal noise: values beyond [-2.2, 2.7]
    erased = examples(config, 16)
    assert not np.array_equal(erased, full[:16])
    config.seed = 1
    assert not np.array_equal(examples(config, 16), erased)


@pytest.mark.slow
def test_trains_with_randaugment_and_erasing(tmp_path, digits_config):
    # The digits recipe, shortened, with RandAugment m9 (2 ops) and erasing 0.25 on top.
    from vit_jax.train.loop import train

    config = digits_config(
        ('total_steps', '500'), ('warmup_steps', '50'), ('eval_every', '0'),
        ('checkpoint_every', '0'), ('progress_every', '100'),
        ('pp.randaug_layers', '2'), ('pp.erase_prob', '0.25'))
    final = train(config, str(tmp_path))
    assert final['count'] == 360 and final['accuracy'] >= 0.7, final
