"""The device half of the input pipeline: batches leave the host as uint8 pixels; the jitted
steps turn them into model inputs (float32, normalised, randomly erased in training)."""

import functools

import jax
import jax.numpy as jnp

from vit_jax.data.erasing import random_erase
from vit_jax.normalization import NORMALIZATIONS, normalize


def model_inputs(batch: dict[str, jax.Array], normalization: str = 'minus_one_one',
                 erase_prob: float = 0.0) -> jax.Array:
    """The model's input images, float32 [batch, height, width, 3], of a batch of the pipeline.

    uint8 `batch['image']` [batch, height, width, 3] (pixels 0..255) is normalised as
    `normalization` says (a `pp.normalize` name, see `vit_jax.normalization`); float images
    are taken as model inputs already. With `erase_prob` > 0, each image is randomly erased
    (`vit_jax.data.erasing`) with the key in `batch['seed']` uint32 [batch, 2], the
    example's own, so the erasing is a fixed function of the stream position.
    """
    images = batch['image']
    if images.dtype == jnp.uint8:
        images = normalize(images.astype(jnp.float32), **NORMALIZATIONS[normalization])
    if erase_prob:
        keys = jax.random.wrap_key_data(batch['seed'])
        images = jax.vmap(functools.partial(random_erase, prob=erase_prob))(images, keys)
    return images
