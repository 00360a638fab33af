"""The training losses: softmax and sigmoid cross-entropy against hand-computed values, with
label smoothing and soft targets; the sigmoid head's bias of -10 at initialisation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import config as config_lib
from vit_jax.train import step
from vit_jax.train.setup import make_mesh, setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGITS = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]], np.float32)


def reference_sigmoid_xent(logits, targets):
    """-sum_c t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)), written out in float64."""
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)


def reference_softmax_xent(logits, targets):
    z = logits.astype(np.float64)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(targets * log_p).sum(-1)


@pytest.mark.parametrize('name, reference', [('sigmoid_xent', reference_sigmoid_xent),
                                             ('softmax_xent', reference_softmax_xent)])
def test_loss_equals_the_written_out_formula(name, reference):
    labels = np.array([0, 2])
    one_hot = np.eye(3)[labels]
    loss = step.LOSSES[name]
    np.testing.assert_allclose(loss(LOGITS, labels), reference(LOGITS, one_hot), rtol=1e-6)
    # Label smoothing 0.3: targets (1 - 0.3) * one_hot + 0.3 / 3.
    np.testing.assert_allclose(loss(LOGITS, labels, 0.3),
                               reference(LOGITS, 0.7 * one_hot + 0.1), rtol=1e-6)
    # Mixup's soft targets pass as they are.
    soft = np.array([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]])
    np.testing.assert_allclose(loss(LOGITS, soft), reference(LOGITS, soft), rtol=1e-6)


def test_sigmoid_xent_sums_over_classes_not_means():
    # Logits 0 everywhere: log 2 per class, so 3 log 2 per example.
    zeros = np.zeros((1, 3), np.float32)
    np.testing.assert_allclose(step.sigmoid_cross_entropy(zeros, np.array([1])),
                               [3 * np.log(2)], rtol=1e-6)


def test_sigmoid_run_starts_with_head_bias_minus_ten_and_trains():
    config = config_lib.load_config(os.path.join(REPO, 'vit_jax', 'configs', 'digits.py'))
    config = config_lib.apply_overrides(config, [
        ('loss', 'sigmoid_xent'), ('model.depth', '1'), ('batch', '16'), ('label_smoothing', '0.1'),
        ('mixup_alpha', '0.2')])
    run = setup(config, 10, make_mesh(config))
    state = run.init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state.params['head']['bias'], np.full(10, -10.0))
    batch = {'image': jnp.ones((16, 16, 16, 3)), 'label': jnp.arange(16) % 10}
    losses = []
    for _ in range(5):
        state, metrics = run.train_step(state, batch, {})
        losses.append(float(metrics['loss']))
    # The head's kernel starts at zero, so every logit is -10: targets summing to 1 (smoothed and
    # mixed or not) cost softplus(10) + 9 softplus(-10) per example.
    np.testing.assert_allclose(losses[0], np.logaddexp(0, 10) + 9 * np.logaddexp(0, -10),
                               rtol=1e-5)
    assert losses[-1] < losses[0], losses
    sums = run.eval_step(state, {**batch, 'mask': jnp.ones(16)})
    assert float(sums['loss']) / 16 > 0
