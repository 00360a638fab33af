"""RandAugment as timm's `rand-mM-mstdS-inc1` (DeiT, DHVT, SReT), in TensorFlow ops on one
uint8 image `[height, width, 3]`, driven by a stateless seed.

Each of `layers` steps picks one of `OPS` uniformly (with replacement) and applies it with
probability 0.5, at a magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10]; ops
with a direction (rotate, shear, translate, the enhancements) take either sign with equal odds.
The ops follow PIL's definitions as timm calls them (lookup tables, PIL's greyscale and blend
rounding), so the pixel ops equal timm's; the geometric ops sample bilinearly, as timm with
`interpolation='bilinear'` (DeiT uses bicubic, which TensorFlow's transform op lacks), and fill
uncovered pixels with `fill` (timm: the normalisation mean, `(124, 116, 104)` for ImageNet's).
"""

import functools
import math

import tensorflow as tf

OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
       'TranslateYRel')
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
PIXEL = tuple(op for op in OPS if op not in GEOMETRIC)
# Op index (len(OPS): not applied) -> switch branch: a pixel op, the affine one, the identity.
_BRANCH = tf.constant([PIXEL.index(op) if op in PIXEL else len(PIXEL) for op in OPS]
                      + [len(PIXEL) + 1])
_GEOMETRIC_INDEX = tf.constant([GEOMETRIC.index(op) if op in GEOMETRIC else 0 for op in OPS]
                               + [0])
MAX_LEVEL = 10.0  # timm's _LEVEL_DENOM: magnitudes are out of 10.
APPLY_PROB = 0.5


@tf.autograph.experimental.do_not_convert  # Plain ops: tracing as is is much faster.
def randaugment(image: tf.Tensor, seed: tf.Tensor, layers: int, magnitude: float,
                magnitude_std: float, fill: tuple[int, int, int]) -> tf.Tensor:
    """Applies `layers` random ops to uint8 `image` [height, width, 3]; returns uint8, same shape.

    `seed` is a stateless seed (int [2]): the result is a fixed function of it.
    """
    image = tf.ensure_shape(image, [None, None, 3])
    shape = image.shape
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, layers)):
        pick, apply, noise, sign = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 4))
        index = tf.random.stateless_uniform([], pick, 0, len(OPS), tf.int32)
        index = tf.where(tf.random.stateless_uniform([], apply) < APPLY_PROB, index, len(OPS))
        level = magnitude + magnitude_std * tf.random.stateless_normal([], noise, dtype=tf.float64)
        level = tf.clip_by_value(level, 0.0, MAX_LEVEL) if magnitude_std > 0 else tf.constant(
            float(magnitude), tf.float64)
        negate = tf.random.stateless_uniform([], sign) > 0.5
        # The geometric ops share one branch (an affine map of the chosen matrix): each branch
        # of the switch costs its graph's size per image even when not taken.
        matrices = tf.stack([_matrix(op, image, level, negate) for op in GEOMETRIC])
        branches = [_branch(op, image, level, negate, fill) for op in PIXEL]
        matrix = tf.unstack(tf.gather(matrices, tf.gather(_GEOMETRIC_INDEX, index)))
        branches.append(functools.partial(affine, image, matrix, fill))
        branches.append(functools.partial(tf.identity, image))  # Not applied.
        image = tf.ensure_shape(tf.switch_case(tf.gather(_BRANCH, index), branches), shape)
    return image


def apply_op(name: str, image: tf.Tensor, level: float, negate: bool = False,
             fill: tuple[int, int, int] = (128, 128, 128)) -> tf.Tensor:
    """Op `name` of `OPS` at magnitude `level` (0..10) on uint8 `image` [height, width, 3];
    `negate` flips the direction of directional ops (timm's random sign)."""
    return _branch(name, image, tf.constant(level, tf.float64), tf.constant(negate), fill)()


def _matrix(name, image, level, negate) -> list:
    """The affine matrix `(a, b, c, d, e, f)` of geometric op `name` (see `affine`)."""
    fraction = level / MAX_LEVEL
    signed = tf.where(negate, -fraction, fraction)
    size = tf.cast(tf.shape(image), tf.float64)
    if name == 'Rotate':
        return rotation(image, signed * 30.0)
    zero, one = tf.zeros([], tf.float64), tf.ones([], tf.float64)
    return {
        'ShearX': [one, signed * 0.3, zero, zero, one, zero],
        'ShearY': [one, zero, zero, signed * 0.3, one, zero],
        'TranslateXRel': [one, zero, signed * 0.45 * size[1], zero, one, zero],
        'TranslateYRel': [one, zero, zero, zero, one, signed * 0.45 * size[0]],
    }[name]


def _branch(name, image, level, negate, fill):
    """A no-argument function applying op `name` with timm's magnitude-to-argument mapping."""
    if name in GEOMETRIC:
        return lambda: affine(image, _matrix(name, image, level, negate), fill)
    fraction = level / MAX_LEVEL
    signed = lambda value: tf.where(negate, -value, value)  # noqa: E731
    least = tf.constant(0.1, tf.float64)
    enhance = lambda: tf.maximum(least, 1.0 + signed(fraction * 0.9))  # noqa: E731
    ops = {
        'AutoContrast': lambda: auto_contrast(image),
        'Equalize': lambda: equalize(image),
        'Invert': lambda: 255 - image,
        'PosterizeIncreasing': lambda: posterize(image, 4 - _trunc(fraction * 4)),
        'SolarizeIncreasing': lambda: solarize(
            image, 256 - tf.minimum(256, _trunc(fraction * 256))),
        'SolarizeAdd': lambda: solarize_add(image, tf.minimum(128, _trunc(fraction * 110))),
        'ColorIncreasing': lambda: blend(grayscale(image), image, enhance()),
        'ContrastIncreasing': lambda: blend(_mean_gray(image), image, enhance()),
        'BrightnessIncreasing': lambda: blend(tf.zeros_like(image), image, enhance()),
        'SharpnessIncreasing': lambda: blend(smooth(image), image, enhance()),
    }
    return ops[name]


def _trunc(value: tf.Tensor) -> tf.Tensor:
    """Python's int() of a non-negative float64."""
    return tf.cast(tf.floor(value), tf.int32)


def _lookup(image: tf.Tensor, tables: tf.Tensor) -> tf.Tensor:
    """Maps each channel of uint8 `image` through its table, `tables` int [3, 256]."""
    channels = tf.unstack(tf.cast(image, tf.int32), axis=-1)
    mapped = [tf.gather(tables[c], channel) for c, channel in enumerate(channels)]
    return tf.cast(tf.clip_by_value(tf.stack(mapped, axis=-1), 0, 255), tf.uint8)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel's range [min, max] to [0, 255] (PIL's autocontrast, cutoff 0)."""
    values = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
    low, high = tf.reduce_min(values, 0)[:, None], tf.reduce_max(values, 0)[:, None]
    scale = 255.0 / tf.maximum(high - low, 1.0)
    levels = tf.range(256, dtype=tf.float64)[None]
    stretched = tf.cast(tf.clip_by_value(levels * scale - low * scale, 0, 255), tf.int32)
    return _lookup(image, tf.where(high > low, stretched, tf.cast(levels, tf.int32)))


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Equalises each channel's histogram (PIL's equalize)."""
    tables = []
    for channel in tf.unstack(tf.cast(image, tf.int32), axis=-1):
        histogram = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
        last = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)))
        step = (tf.reduce_sum(histogram) - last) // 255
        before = tf.cumsum(histogram, exclusive=True)
        equalized = (tf.maximum(step, 1) // 2 + before) // tf.maximum(step, 1)
        tables.append(tf.where(step > 0, equalized, tf.range(256)))
    return _lookup(image, tf.stack(tables))


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Keeps the `bits` (0..8) most significant bits of each value."""
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.where(bits > 0, tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift),
                    tf.zeros_like(image))


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """Inverts the values >= `threshold` (0..256)."""
    return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """Adds `addition` to the values below `threshold`, saturating at 255."""
    values = tf.cast(image, tf.int32)
    added = tf.minimum(values + addition, 255)
    return tf.cast(tf.where(values < threshold, added, values), tf.uint8)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L -> RGB: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, in every channel."""
    weights = tf.constant([19595, 38470, 7471], tf.int32)
    gray = (tf.reduce_sum(tf.cast(image, tf.int32) * weights, -1, keepdims=True) + 32768) // 65536
    return tf.cast(tf.tile(gray, [1, 1, 3]), tf.uint8)


def _mean_gray(image: tf.Tensor) -> tf.Tensor:
    """The image's mean grey level, rounded (PIL's Contrast degenerate), as a constant image."""
    mean = tf.reduce_mean(tf.cast(grayscale(image)[..., 0], tf.float64))
    return tf.fill(tf.shape(image), tf.cast(tf.floor(mean + 0.5), tf.uint8))


def smooth(image: tf.Tensor) -> tf.Tensor:
    """PIL's SMOOTH filter (3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded); the
    border pixels stay as they are."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    values = tf.cast(image, tf.float32)[None]
    smoothed = tf.nn.depthwise_conv2d(values, kernel, [1, 1, 1, 1], 'VALID')[0]
    smoothed = tf.cast(tf.clip_by_value(tf.floor(smoothed + 0.5), 0, 255), tf.uint8)
    return tf.concat([image[:1], tf.concat([image[1:-1, :1], smoothed, image[1:-1, -1:]], 1),
                      image[-1:]], 0)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's `Image.blend(degenerate, image, factor)`: `degenerate + factor (image -
    degenerate)` in float32, truncated and clipped to uint8 (factor > 1 extrapolates)."""
    start = tf.cast(degenerate, tf.float32)
    mixed = start + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - start)
    return tf.cast(tf.clip_by_value(tf.floor(mixed), 0, 255), tf.uint8)


def rotation(image: tf.Tensor, degrees: tf.Tensor) -> list:
    """The `affine` matrix rotating `image` counter-clockwise by `degrees` about its centre
    (PIL's rotate)."""
    angle = -degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    size = tf.cast(tf.shape(image), tf.float64)
    cx, cy = size[1] / 2, size[0] / 2
    return [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]


def affine(image: tf.Tensor, matrix: list, fill: tuple[int, int, int]) -> tf.Tensor:
    """PIL's `Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)`.

    `matrix` `(a, b, c, d, e, f)` maps an output point (x, y) to the input point (a x + b y + c,
    d x + e y + f), in continuous coordinates (pixel centres at +0.5). Output pixels whose input
    point falls outside the image get `fill`; the others interpolate bilinearly, with edge pixels
    repeated (as PIL).
    """
    a, b, c, d, e, f = (tf.cast(v, tf.float64) for v in matrix)
    # Pixel-index coordinates (TensorFlow's): in = M (out + 0.5) - 0.5.
    transform = tf.cast(tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2,
                                  0.0, 0.0]), tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    sampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=tf.stack([height, width]), fill_value=0.0, interpolation='BILINEAR',
        fill_mode='NEAREST')[0]
    ys, xs = tf.meshgrid(tf.range(tf.cast(height, tf.float64)) + 0.5,
                         tf.range(tf.cast(width, tf.float64)) + 0.5, indexing='ij')
    x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
    inside = ((x_in >= 0) & (x_in < tf.cast(width, tf.float64)) & (y_in >= 0)
              & (y_in < tf.cast(height, tf.float64)))
    pixels = tf.cast(tf.clip_by_value(tf.floor(sampled), 0, 255), tf.uint8)  # PIL truncates
    return tf.where(inside[..., None], pixels, tf.constant(fill, tf.uint8))
