"""Random erasing as timm's `RandomErasing(probability, mode='pixel', max_count=1)` (DeiT), in
TensorFlow ops on one normalised image `[height, width, channels]`, driven by a stateless seed."""

import math

import tensorflow as tf

AREA = (0.02, 1 / 3)  # Erased fraction of the image.
ASPECT = (0.3, 1 / 0.3)  # Height / width, drawn log-uniformly.
ATTEMPTS = 10  # Boxes tried until one fits; none fitting leaves the image as it is.


def random_erase(image: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
    """With probability `prob`, replaces one random box of float `image` [height, width,
    channels] by standard-normal noise, per pixel and channel; returns the same shape.

    The box covers a uniform 2-33 % of the area with a log-uniform aspect ratio in [0.3, 3.3]
    (height and width rounded); of `ATTEMPTS` draws the first that fits is used.
    """
    coin, area_seed, aspect_seed, top_seed, left_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.random.stateless_uniform([ATTEMPTS], area_seed, *AREA, tf.float64) * tf.cast(
        height * width, tf.float64)
    aspect = tf.exp(tf.random.stateless_uniform(
        [ATTEMPTS], aspect_seed, math.log(ASPECT[0]), math.log(ASPECT[1]), tf.float64))
    box_h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # Half to even, as Python.
    box_w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32))
    box_h, box_w = tf.minimum(box_h[first], height), tf.minimum(box_w[first], width)
    top = tf.random.stateless_uniform([], top_seed, 0, height - box_h + 1, tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - box_w + 1, tf.int32)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    erase = (tf.random.stateless_uniform([], coin) < prob) & tf.reduce_any(fits)
    noise = tf.random.stateless_normal(shape, noise_seed, dtype=image.dtype)
    return tf.where(inside & erase, noise, image)
