"""Random erasing as timm's `RandomErasing(probability, mode='pixel', max_count=1)` (DeiT), in JAX
on one normalised image `[height, width, channels]`, drawn from a key (run on device, under
`jax.vmap` over a batch; see `vit_jax.data.device`)."""

import math

import jax
import jax.numpy as jnp

AREA = (0.02, 1 / 3)  # Erased fraction of the image.
ASPECT = (0.3, 1 / 0.3)  # Height / width, drawn log-uniformly.
ATTEMPTS = 10  # Boxes tried until one fits; none fitting leaves the image as it is.


def random_erase(image: jax.Array, key: jax.Array, prob: float) -> jax.Array:
    """With probability `prob`, replaces one random box of float `image` [height, width,
    channels] by standard-normal noise, per pixel and channel; returns the same shape.

    The box covers a uniform 2-33 % of the area with a log-uniform aspect ratio in [0.3, 3.3]
    (height and width rounded); of `ATTEMPTS` draws the first that fits is used.
    """
    coin, area_key, aspect_key, top_key, left_key, noise_key = jax.random.split(key, 6)
    height, width = image.shape[0], image.shape[1]
    area = jax.random.uniform(area_key, [ATTEMPTS], minval=AREA[0], maxval=AREA[1]) * (
        height * width)
    aspect = jnp.exp(jax.random.uniform(aspect_key, [ATTEMPTS], minval=math.log(ASPECT[0]),
                                        maxval=math.log(ASPECT[1])))
    box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # Half to even, as Python.
    box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_h < height) & (box_w < width)
    first = jnp.argmax(fits)
    box_h, box_w = jnp.minimum(box_h[first], height), jnp.minimum(box_w[first], width)
    top = jax.random.randint(top_key, [], 0, height - box_h + 1)
    left = jax.random.randint(left_key, [], 0, width - box_w + 1)
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    erase = (jax.random.uniform(coin) < prob) & fits.any()
    noise = jax.random.normal(noise_key, image.shape, image.dtype)
    return jnp.where(inside & erase, noise, image)
