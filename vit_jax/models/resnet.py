"""ResNet-v2 with weight-standardised convolutions and GroupNorm: the stem of the hybrid
R+ViT models (Dosovitskiy et al., 2021) and Big Transfer (BiT, Kolesnikov et al., 2020).

Two residual units share the code: `Bottleneck` (post-activation, what the hybrids use; parameter
names of the original `.npz`: `conv1`, `gn1`, ..., `conv_proj`, `gn_proj`) and
`PreActBottleneck` (pre-activation, BiT). Stages are named `block{i}/unit{j}` as in the original.
Padding: the hybrids use TensorFlow 'SAME'; BiT, as timm runs it, symmetric padding and a
zero-padded max pool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vit_jax.models import contract, convert, layers
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS


class StdConv(nn.Module):
    """Convolution without bias whose kernel is standardised per output channel:
    `(w - mean) / (std + eps)` over `[height, width, in]`. `[b, h, w, c] -> [b, h', w', features]`.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: str = 'SAME'  # 'SAME' (TensorFlow) or 'SYMMETRIC' (PyTorch: kernel // 2 each side)
    eps: float = 1e-5
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        w = self.param('kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        w = w - w.mean(axis=(0, 1, 2))
        w = w / (w.std(axis=(0, 1, 2)) + self.eps)
        padding = self.padding if self.padding == 'SAME' else [(k // 2, k // 2)] * 2
        x, w = nn.dtypes.promote_dtype(x, w, dtype=self.dtype)
        return jax.lax.conv_general_dilated(x, w, (self.strides,) * 2, padding,
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Bottleneck(nn.Module):
    """Post-activation bottleneck (the hybrids'): `[b, h, w, c] -> [b, h/s, w/s, 4 * features]`.

    GroupNorm eps 1e-6 and standardisation eps 1e-5, as the original code."""

    features: int
    strides: int = 1
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, s, name: StdConv(f, k, s, dtype=self.dtype, name=name)  # noqa: E731
        norm = lambda name, **kw: nn.GroupNorm(epsilon=1e-6, dtype=self.dtype, name=name,  # noqa: E731
                                               **kw)
        residual = x
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            residual = norm('gn_proj')(conv(4 * self.features, 1, self.strides, 'conv_proj')(x))
        y = nn.relu(norm('gn1')(conv(self.features, 1, 1, 'conv1')(x)))
        y = nn.relu(norm('gn2')(conv(self.features, 3, self.strides, 'conv2')(y)))
        y = norm('gn3', scale_init=nn.initializers.zeros)(conv(4 * self.features, 1, 1, 'conv3')(y))
        return nn.relu(residual + y)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (BiT): `[b, h, w, c] -> [b, h/s, w/s, 4 * features]`.

    GroupNorm eps 1e-5 and standardisation eps 1e-8, as timm."""

    features: int
    strides: int = 1
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, s, name: StdConv(f, k, s, padding='SYMMETRIC',  # noqa: E731
                                             eps=1e-8, dtype=self.dtype, name=name)
        norm_act = lambda name: lambda y: nn.relu(nn.GroupNorm(  # noqa: E731
            epsilon=1e-5, dtype=self.dtype, name=name)(y))
        pre = norm_act('gn1')(x)
        residual = x
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            residual = conv(4 * self.features, 1, self.strides, 'conv_proj')(pre)
        y = conv(self.features, 1, 1, 'conv1')(pre)
        y = conv(self.features, 3, self.strides, 'conv2')(norm_act('gn2')(y))
        y = conv(4 * self.features, 1, 1, 'conv3')(norm_act('gn3')(y))
        return y + residual


class ResNetStage(nn.Module):
    """`depth` units of `features` bottleneck features, the first with stride `strides`:
    `[b, h, w, c] -> [b, h / strides, w / strides, 4 * features]` (units `unit1..unitN`)."""

    depth: int
    features: int
    strides: int
    preact: bool
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        unit = PreActBottleneck if self.preact else Bottleneck
        for j in range(self.depth):
            x = unit(self.features, self.strides if j == 0 else 1, dtype=self.dtype,
                     name=f'unit{j + 1}')(x)
        return x


def resnet_stages(x: jax.Array, layers: tuple[int, ...], width: int, *, preact: bool,
                  dtype: str = 'float32') -> jax.Array:
    """Stages `block1..blockN` in the calling module's scope; stage i has `width * 2**i`
    bottleneck features and halves the resolution, except the first."""
    for i, depth in enumerate(layers):
        x = ResNetStage(depth, width * 2**i, 2 if i else 1, preact, dtype, name=f'block{i + 1}')(x)
        x = nn.with_logical_constraint(x, ('batch', 'height', 'width', 'embed'))
    return x


def hybrid_stem(x: jax.Array, layers: tuple[int, ...], width_factor: float,
                dtype: str = 'float32') -> jax.Array:
    """The hybrid ViT's ResNet: root (7×7/2 conv, GroupNorm, ReLU, 3×3/2 max pool) and stages,
    created in the calling module's scope (`conv_root`, `gn_root`, `block{i}/unit{j}`).

    `[b, h, w, c] -> [b, h / stride, w / stride, features]`, `stride = hybrid_stride(layers)`.
    """
    width = int(64 * width_factor)
    x = StdConv(width, 7, 2, dtype=dtype, name='conv_root')(x)
    x = nn.relu(nn.GroupNorm(epsilon=1e-6, dtype=dtype, name='gn_root')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    return resnet_stages(x, layers, width, preact=False, dtype=dtype)


def hybrid_stride(layers: tuple[int, ...]) -> int:
    """How much `hybrid_stem` downsamples: 4 for the root, 2 per stage after the first."""
    return 4 * 2 ** max(len(layers) - 1, 0)


# The root and the stages (`hybrid_stem` too) stay whole on every device of a model group.
STEM_SPLITS = contract.replicated('conv_root', 'gn_root', r'block\d+')


class ResNetV2(nn.Module, contract.Family):
    """BiT: pre-activation ResNet-v2, images `[batch, height, width, in_chans]` -> logits
    `[batch, num_classes]` (pooled features `[batch, 2048 * width_factor]` if `num_classes=0`).
    """

    num_classes: int = 1000
    img_size: int = 224
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    in_chans: int = 3
    dtype: str = 'float32'

    stem_layers = r'(conv_root|gn_root)/'
    block_layers = ((r'block(\d+)/unit(\d+)/', ()),)
    feature_modules = r'block\d+'
    default_preprocessing = contract.Preprocessing(
        crop_pct=0.875, interpolation='bilinear', **NORMALIZATIONS['imagenet'])
    model_splits = (*STEM_SPLITS, *contract.replicated('gn_final', 'head'))

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(convert=_from_timm, layouts='timm resnetv2_*_bit state dicts')

    def __post_init__(self) -> None:
        contract.check_choices((('dtype', self.dtype, contract.DTYPES),))
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout, and GroupNorm has no batch statistics
        layers.check_images(images, self.in_chans)
        width = 64 * self.width_factor
        x = StdConv(width, 7, 2, padding='SYMMETRIC', eps=1e-8, dtype=self.dtype,
                    name='conv_root')(images)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zeros, as BiT's fixed padding
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = resnet_stages(x, self.layers, width, preact=True, dtype=self.dtype)
        x = nn.relu(nn.GroupNorm(epsilon=1e-5, dtype=self.dtype, name='gn_final')(x))
        x = x.mean(axis=(1, 2))
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype)


# ----------------------------------------------------------------------------- variants

BIT_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
for _depth, _wf in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4)):
    register(f'BiT-R{_depth}x{_wf}', ResNetV2, layers=BIT_DEPTHS[_depth], width_factor=_wf)


# ----------------------------------------------------------------------------- weights


def torch_stages(sd: convert.Flat, prefix: str, out: str) -> convert.Flat:
    """timm ResNetV2 stages `{prefix}stages.i.blocks.j.*` -> `{out}block{i+1}/unit{j+1}/*`
    (both the hybrid's `Bottleneck` and BiT's `PreActBottleneck`)."""
    names = {'conv1': 'conv1', 'conv2': 'conv2', 'conv3': 'conv3', 'downsample.conv': 'conv_proj',
             'downsample.norm': 'gn_proj', 'norm1': 'gn1', 'norm2': 'gn2', 'norm3': 'gn3'}
    arrays = {}
    for key, value in sd.items():
        if not key.startswith(prefix + 'stages.'):
            continue
        i, _, j, rest = key[len(prefix + 'stages.'):].split('.', 3)
        module, kind = rest.rsplit('.', 1)
        target = f'{out}block{int(i) + 1}/unit{int(j) + 1}/{names[module]}'
        arrays.update(torch_norm_or_conv(target, kind, value))
    return arrays


def torch_norm_or_conv(target: str, kind: str, value: np.ndarray) -> convert.Flat:
    """One PyTorch conv (`weight` 4-D) or norm (`weight`/`bias` 1-D) array under flax names."""
    if value.ndim == 4:
        return {f'{target}/kernel': convert.conv(value)}
    return {f'{target}/{"scale" if kind == "weight" else "bias"}': value}


def _from_timm(sd: convert.Flat, model: nn.Module) -> convert.Flat | None:
    if 'stem.conv.weight' not in sd:
        return None
    out = {'params/conv_root/kernel': convert.conv(sd['stem.conv.weight']),
           'params/gn_final/scale': sd['norm.weight'], 'params/gn_final/bias': sd['norm.bias']}
    out.update(torch_stages(sd, '', 'params/'))
    if 'head.fc.weight' in sd:
        out['params/head/kernel'] = sd['head.fc.weight'].reshape(sd['head.fc.weight'].shape[:2]).T
        out['params/head/bias'] = sd['head.fc.bias']
    return out

