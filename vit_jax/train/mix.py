"""Mixup and CutMix on device, one draw per batch, as timm's `Mixup(mode='batch')` that DeiT
trains with: each image is mixed with the image at the mirrored position of the batch
(`images[::-1]`), by a weight `lam` ~ Beta(alpha, alpha) (mixup) or by pasting a box of the
mirrored image whose area is `1 - lam` (CutMix, `lam` then corrected to the box's clipped area);
the targets are the one-hot labels, smoothed, mixed with the same weight.

Pure functions of a JAX key, so a resumed run draws the same mixing as an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class MixParams:
    """One batch's draw: `lam` (the weight of the original images and labels; 1 = no mixing),
    whether CutMix is used, and the CutMix box rows `[top, bottom)`, columns `[left, right)`."""

    lam: jax.Array
    use_cutmix: jax.Array
    box: tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def sample(rng: jax.Array, height: int, width: int, *, mixup_alpha: float, cutmix_alpha: float,
           prob: float = 1.0, switch_prob: float = 0.5) -> MixParams:
    """Draws the mixing of one batch of `height` x `width` images.

    With probability `prob` the batch is mixed: by CutMix with probability `switch_prob` when
    both alphas are > 0 (only by the one that is > 0 otherwise), `lam` ~ Beta(alpha, alpha) of
    the method chosen. A CutMix box is centred uniformly on the image, `lam` corrected to the
    area left after clipping it to the image.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError('mixing needs mixup_alpha > 0 or cutmix_alpha > 0')
    apply_rng, switch_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 5)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(switch_rng) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam = jnp.ones((), jnp.float32)
    if mixup_alpha > 0:
        lam = jnp.where(use_cutmix, lam, jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha))
    if cutmix_alpha > 0:
        lam = jnp.where(use_cutmix, jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha), lam)
    applied = jax.random.uniform(apply_rng) < prob
    lam = jnp.where(applied, lam, 1.0)
    use_cutmix = use_cutmix & applied
    y_rng, x_rng = jax.random.split(box_rng)
    centre_y = jax.random.randint(y_rng, (), 0, height)
    centre_x = jax.random.randint(x_rng, (), 0, width)
    box = cutmix_box(lam, centre_y, centre_x, height, width)
    lam = jnp.where(use_cutmix, box_lam(box, height, width), lam)
    return MixParams(lam=lam.astype(jnp.float32), use_cutmix=use_cutmix, box=box)


def cutmix_box(lam: jax.Array, centre_y: jax.Array, centre_x: jax.Array, height: int,
               width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The CutMix box `(top, bottom, left, right)` of sides `int(size * sqrt(1 - lam))` around
    `(centre_y, centre_x)` (`side // 2` above and left of it), clipped to the image: timm's
    `rand_bbox` as of timm 1.0.31 (older timm, as DeiT used, cut odd sides one pixel short)."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    return (jnp.clip(centre_y - cut_h // 2, 0, height),
            jnp.clip(centre_y + (cut_h + 1) // 2, 0, height),
            jnp.clip(centre_x - cut_w // 2, 0, width),
            jnp.clip(centre_x + (cut_w + 1) // 2, 0, width))


def box_lam(box: tuple[jax.Array, ...], height: int, width: int) -> jax.Array:
    """The share of the image outside `box`: CutMix's corrected `lam`."""
    top, bottom, left, right = box
    area = height * width
    return (area - (bottom - top) * (right - left)).astype(jnp.float32) / area


def mix_images(params: MixParams, images: jax.Array) -> jax.Array:
    """`images` `[batch, height, width, channels]` mixed with `images[::-1]` by `params`."""
    flipped = images[::-1]
    top, bottom, left, right = params.box
    rows = jnp.arange(images.shape[1])[:, None]
    cols = jnp.arange(images.shape[2])[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    cut = jnp.where(inside[None, :, :, None], flipped, images)
    lam = params.lam.astype(images.dtype)
    blended = images * lam + flipped * (1 - lam)
    mixed = jnp.where(params.use_cutmix, cut, blended)
    return jnp.where(params.lam < 1, mixed, images)


def mix_targets(lam: jax.Array, labels: jax.Array, num_classes: int,
                label_smoothing: float = 0.0) -> jax.Array:
    """Soft targets `[batch, num_classes]`: smoothed one-hot `labels` `[batch]` (off value
    `label_smoothing / num_classes`), weighted `lam`, plus those of `labels[::-1]`, `1 - lam`."""
    off = label_smoothing / num_classes
    one_hot = jnp.where(jax.nn.one_hot(labels, num_classes) > 0, 1.0 - label_smoothing + off, off)
    return one_hot * lam + one_hot[::-1] * (1 - lam)


def mix(rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, *,
        mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5,
        label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mixup / CutMix of one batch: `images` `[batch, height, width, channels]`, `labels`
    `[batch]` -> (mixed images, soft targets `[batch, num_classes]`), drawn by `sample`."""
    params = sample(rng, images.shape[1], images.shape[2], mixup_alpha=mixup_alpha,
                    cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
    return (mix_images(params, images),
            mix_targets(params.lam, labels, num_classes, label_smoothing))
