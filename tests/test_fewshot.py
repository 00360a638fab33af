"""Few-shot linear evaluation: the closed-form ridge against scikit-learn's Ridge on the same
features (both branches of the closed form), the k-per-class draw, and features of a headless
model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Ridge

import vit_jax
from vit_jax.train import fewshot


def sklearn_reference(train_x, train_y, test_x, num_classes, l2):
    """The same regression with scikit-learn: whitened features, a bias feature of 100, ±1
    targets, no intercept of its own."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5

    def prep(x):
        return np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)

    targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver='cholesky').fit(prep(train_x), targets)
    return ridge.coef_.T, ridge.predict(prep(test_x)).argmax(-1)


@pytest.mark.parametrize('n, dim', [(200, 16), (30, 64)])  # n >= dim and n < dim
def test_ridge_equals_sklearn(n, dim):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, dim)) * 2
    train_y, test_y = rng.integers(0, 5, n), rng.integers(0, 5, 100)
    train_x = (centres[train_y] + rng.normal(size=(n, dim))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(100, dim))).astype(np.float32)
    for l2 in (1.0, fewshot.L2_REG):
        w, _, _ = fewshot.ridge_weights(jnp.asarray(train_x), jnp.asarray(train_y), 5, l2)
        coef, predictions = sklearn_reference(train_x, train_y, test_x, 5, l2)
        np.testing.assert_allclose(w, coef, rtol=2e-3, atol=2e-5)
        accuracy = fewshot.ridge_accuracy(train_x, train_y, test_x, test_y, 5, l2)
        assert accuracy == pytest.approx(np.mean(predictions == test_y), abs=1e-6)
    assert accuracy > 0.8  # separable clusters: the classifier works at all


def test_shot_indices_draw_k_per_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    index = fewshot.shot_indices(labels, 5, 3)
    assert np.bincount(labels[index]).tolist() == [5, 3, 5]
    assert len(set(index)) == len(index)
    np.testing.assert_array_equal(index, fewshot.shot_indices(labels, 5, 3))


def test_features_are_the_pre_logits_of_the_headless_model():
    model = vit_jax.create_model('testing', num_classes=7, img_size=8, patch_size=4)
    images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    variables = model.init(jax.random.key(0), images)
    feats = fewshot.features(model, variables, images)
    assert feats.shape == (3, model.embed_dim)
    head = variables['params']['head']
    np.testing.assert_allclose(feats @ head['kernel'] + head['bias'],
                               model.apply(variables, images), rtol=1e-5, atol=1e-6)
