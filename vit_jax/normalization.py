"""Input normalisations (`config.pp.normalize`): one definition for training, evaluation,
`vit_jax.predict` and `vit_jax.analysis`; numpy only, so it works on numpy, jax and TensorFlow
arrays alike."""

from typing import Any

import numpy as np

# Per-channel mean and std of pixels scaled to [0, 1].
NORMALIZATIONS = {
    # The original ViT checkpoints' inputs: pixels mapped to [-1, 1].
    'minus_one_one': {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)},
    # ImageNet statistics, as timm, DeiT, Swin, ConvNeXt, DHVT and SReT use.
    'imagenet': {'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)},
}


def normalize(pixels: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """Maps pixel values 0..255 `[..., channels]` to `(pixels / 255 - mean) / std`.

    Computed as `(pixels - 255 mean) / (255 std)` in float32, so 'minus_one_one' is exactly
    `(pixels - 127.5) / 127.5`. `pixels` may be a numpy, jax or TensorFlow float array.
    """
    scale = np.float32(255)
    return (pixels - np.float32(mean) * scale) / (np.float32(std) * scale)


def fill_color(name: str) -> tuple[int, int, int]:
    """The mean colour of normalisation `name` as uint8 RGB (the fill of RandAugment's
    geometric ops, as timm's `img_mean`): 128 grey for 'minus_one_one'."""
    return tuple(min(255, round(255 * m)) for m in NORMALIZATIONS[name]['mean'])
