"""Few-shot linear evaluation as big_vision's `fewshot` evaluator: pre-logit features of `k`
training examples per class, a closed-form ridge regression onto ±1 targets, accuracy on the
whole test split. Pure functions of features; no data loading."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data.device import model_inputs

# Shots per class (big_vision's default).
SHOTS = (1, 5, 10, 25)
# Ridge penalty (big_vision's `l2_reg` default, 2 ** 10) and the constant bias feature, large
# so that the bias is almost unregularised (big_vision's 100).
L2_REG = 2.0 ** 10
BIAS_FEATURE = 100.0


def features(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    """Pre-logit features `[batch, dim]` of images `[batch, h, w, c]`: the model without its
    head (`num_classes=0`), in evaluation mode, with the head's parameters left out."""
    headless = model.clone(num_classes=0)
    params = {k: v for k, v in variables['params'].items() if k not in model.head_names}
    return headless.apply({**variables, 'params': params}, images, train=False)


def shot_indices(labels: np.ndarray, shots: int, num_classes: int, seed: int = 0
                 ) -> np.ndarray:
    """Indices of `shots` examples of each class of `labels` `[n]` (all of a class that has
    fewer), drawn without replacement by `seed`, class by class."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
    return np.concatenate(picked)


def _whiten(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """`(x - mean) / std` with the constant bias feature appended: `[n, dim + 1]`."""
    x = (x - mean) / std
    return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)


def ridge_weights(x: jax.Array, labels: jax.Array, num_classes: int, l2: float = L2_REG
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(weights [dim + 1, classes], mean, std)`: the ridge regression of ±1 class targets on
    features `x` `[n, dim]` whitened by their own mean and std, bias feature appended;
    `(XᵀX + l2 I)⁻¹ XᵀY` or, with fewer examples than features, `Xᵀ(XXᵀ + l2 I)⁻¹ Y`."""
    x = x.astype(jnp.float32)
    mean = x.mean(0, keepdims=True)
    std = x.std(0, keepdims=True) + 1e-5
    x = _whiten(x, mean, std)
    y = 2.0 * jax.nn.one_hot(labels, num_classes) - 1.0
    n, dim = x.shape
    if n >= dim:
        w = jnp.linalg.solve(x.T @ x + l2 * jnp.eye(dim), x.T @ y)
    else:
        w = x.T @ jnp.linalg.solve(x @ x.T + l2 * jnp.eye(n), y)
    return w, mean, std


def ridge_accuracy(train_x: jax.Array, train_labels: jax.Array, test_x: jax.Array,
                   test_labels: jax.Array, num_classes: int, l2: float = L2_REG) -> float:
    """Test accuracy of the ridge classifier fitted on `train_x` `[n, dim]`."""
    w, mean, std = ridge_weights(train_x, train_labels, num_classes, l2)
    predictions = (_whiten(test_x.astype(jnp.float32), mean, std) @ w).argmax(-1)
    return float((predictions == test_labels).mean())


def fewshot_accuracies(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
                       test_labels: np.ndarray, num_classes: int,
                       shots: Sequence[int] = SHOTS, seed: int = 0) -> dict[int, float]:
    """`{k: accuracy}` of the ridge classifier on `k` training examples per class, for each
    `k` of `shots`, on every test example."""
    out = {}
    for k in shots:
        index = shot_indices(np.asarray(train_labels), k, num_classes, seed)
        out[k] = ridge_accuracy(train_x[index], train_labels[index], test_x, test_labels,
                                num_classes)
    return out


def collect_features(model: nn.Module, variables: dict, batches: Iterable[dict],
                     normalize: str = 'minus_one_one') -> tuple[np.ndarray, np.ndarray]:
    """`(features [n, dim], labels [n])` of every unmasked example of `batches` (`image`,
    `label`, optional `mask`); uint8 images are normalised as `normalize`
    (`vit_jax.data.device.model_inputs`)."""
    apply = jax.jit(lambda v, images: features(model, v, model_inputs({'image': images},
                                                                      normalize)))
    feats, labels = [], []
    for batch in batches:
        keep = np.asarray(batch.get('mask', np.ones(len(batch['label'])))) > 0
        feats.append(np.asarray(apply(variables, batch['image']))[keep])
        labels.append(np.asarray(batch['label'])[keep])
    return np.concatenate(feats), np.concatenate(labels)
