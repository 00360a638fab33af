"""Few-shot linear evaluation as big_vision's `fewshot` evaluator: pre-logit features of `k`
training examples per class, a closed-form ridge regression onto ±1 targets, accuracy on the
whole test split. The data come from the caller (`vit_jax.train.loop` during training,
`python -m vit_jax.fewshot` on a run or a weights file)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax.data.device import model_inputs

Batch = dict[str, jax.Array]

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


def feature_step(model: nn.Module, normalize: str = 'minus_one_one'
                 ) -> Callable[[dict, Batch], Batch]:
    """`step(variables, batch) -> {'features' [batch, dim], 'label', 'mask'}` of an eval batch
    (`image`, `label`, optional `mask`; 1 where none; uint8 images normalised as `normalize`,
    `vit_jax.data.device.model_inputs`): pure, for `jax.jit` with shardings."""

    def step(variables: dict, batch: Batch) -> Batch:
        mask = batch['mask'] if 'mask' in batch else jnp.ones(batch['label'].shape, jnp.float32)
        return {'features': features(model, variables, model_inputs(batch, normalize)),
                'label': batch['label'], 'mask': mask}

    return step


def collect_features(step: Callable[[dict, Batch], Batch], variables: dict,
                     batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """`(features [n, dim], labels [n])` of every unmasked example of `batches`, through
    `step` (a jitted `feature_step`, whose outputs every process can read)."""
    feats, labels = [], []
    for batch in batches:
        out = jax.device_get(step(variables, batch))
        keep = out['mask'] > 0
        feats.append(out['features'][keep])
        labels.append(out['label'][keep])
    return np.concatenate(feats), np.concatenate(labels)


def evaluate(step: Callable[[dict, Batch], Batch], variables: dict,
             train_batches: Iterable[Batch], test_batches: Iterable[Batch], num_classes: int,
             shots: Sequence[int] = SHOTS, seed: int = 0) -> dict[str, float]:
    """`{'fewshot_k{k}': accuracy}`: the ridge classifier on `k` examples per class of
    `train_batches`, scored on every example of `test_batches`; what the trainer logs and
    `python -m vit_jax.fewshot` prints."""
    train_x, train_labels = collect_features(step, variables, train_batches)
    test_x, test_labels = collect_features(step, variables, test_batches)
    accuracies = fewshot_accuracies(train_x, train_labels, test_x, test_labels, num_classes,
                                    shots, seed)
    return {f'fewshot_k{k}': accuracy for k, accuracy in accuracies.items()}


def train_split_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose evaluation split (`pp.test`) is the split the few-shot
    examples come from (`fewshot_train`, default `pp.train`): its eval iterator reads that split
    as evaluation does (no augmentation, every example once)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.pp.test = config.get('fewshot_train') or config.pp.train
    return copy
