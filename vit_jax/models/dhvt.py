"""DHVT: Dynamic Hybrid Vision Transformer (Lu et al., NeurIPS 2022), as the authors' code
(ArieSeirack/DHVT `vision_transformer.py`, `VisionTransformer(apply_dhvt=True)`).

A ViT for small datasets with three changes and no absolute position embedding:
- SOPE (`SequentialPatchEmbed`): a learnable per-channel affine, a stack of 3x3 stride-2
  convolutions with BatchNorm (GELU between), another affine. Patch size 2, 4 or 16 means 1, 2
  or 4 convolutions.
- DAFF (`DynamicAggregationFeedForward`): the MLP with convolutions on the patch grid
  (1x1 -> BN -> GELU, depthwise 3x3 -> BN -> GELU with a shortcut, 1x1 -> BN); the patch
  average rescales the class token through a squeeze-excitation.
- HI-MHSA (`HeadInteractingAttention`): one extra token per head, made from that head's channel
  group averaged over all tokens, takes part in attention and is then averaged into the class
  token and dropped.

BatchNorm statistics live in the `batch_stats` collection; under `jax.jit` over a sharded batch
they are computed over the global batch, as the authors' SyncBatchNorm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.errors import ModelError
from vit_jax.models import contract, convert, layers
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS

# Patch size -> number of 3x3 stride-2 convolutions in SOPE.
SOPE_CONVS = {2: 1, 4: 2, 16: 4}
# The authors' init: Linear weights trunc_normal(std=.02), class token and head-token
# position embeddings too; convolutions keep PyTorch's default init.
dense_init = layers.trunc_normal
conv_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def conv_bias_init(fan_in: int) -> Callable:
    """PyTorch's default convolution bias init: uniform in +-1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)


class Affine(nn.Module):
    """Learnable per-channel `x * scale + bias` (init 1 and 0): `[..., channels]`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
        bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
        return x * scale.astype(x.dtype) + bias.astype(x.dtype)


class SequentialPatchEmbed(nn.Module):
    """SOPE: `[batch, height, width, in_chans] -> [batch, height / p, width / p, embed_dim]`.

    Convolution `i` of `n` has `embed_dim / 2**(n - 1 - i)` channels; GELU follows every
    convolution but the last (and the single one of patch size 2).
    """

    embed_dim: int
    patch_size: int
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        n = SOPE_CONVS[self.patch_size]
        x = Affine(name='pre_affine')(x)
        for i in range(n):
            x = nn.Conv(self.embed_dim // 2 ** (n - 1 - i), (3, 3), strides=2, padding=1,
                        use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                        name=f'conv_{i}')(x)
            x = layers.batch_norm(train, f'bn_{i}', self.dtype)(x)
            if i < n - 1 or n == 1:
                x = nn.gelu(x, approximate=False)
        return Affine(name='post_affine')(x)


class DynamicAggregationFeedForward(nn.Module):
    """DAFF: `[batch, 1 + rows * cols, dim] -> [batch, 1 + rows * cols, dim]`.

    The first token is the class token; the others form the `grid` `(rows, cols)`.
    """

    hidden_dim: int
    grid: tuple[int, int]
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        batch, _, dim = x.shape
        gelu = lambda y: nn.gelu(y, approximate=False)  # noqa: E731

        def conv(features: int, kernel: int, fan_in: int, name: str, **kw) -> nn.Conv:
            return nn.Conv(features, (kernel, kernel), padding=(kernel - 1) // 2,
                           kernel_init=conv_init, bias_init=conv_bias_init(fan_in),
                           dtype=self.dtype, name=name, **kw)

        cls, tokens = layers.tokens(x, 0, 1), layers.tokens(x, 1)
        y = tokens.reshape(batch, *self.grid, dim)  # [batch, rows, cols, dim]
        y = conv(self.hidden_dim, 1, dim, 'conv1')(y)
        y = gelu(layers.batch_norm(train, 'bn1', self.dtype)(y))
        shortcut = y
        y = conv(self.hidden_dim, 3, 9, 'conv2', feature_group_count=self.hidden_dim)(y)
        y = shortcut + gelu(layers.batch_norm(train, 'bn2', self.dtype)(y))
        y = layers.batch_norm(train, 'bn3', self.dtype)(conv(dim, 1, self.hidden_dim, 'conv3')(y))
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, kernel_init=dense_init, dtype=self.dtype, name=name)
        weight = y.mean(axis=(1, 2))[:, None]  # [batch, 1, dim]
        weight = dense(dim, 'excitation')(gelu(dense(dim // 4, 'compress')(weight)))
        return jnp.concatenate([cls * weight, y.reshape(batch, -1, dim)], axis=1)


class HeadInteractingAttention(layers.AttentionOptions):
    """HI-MHSA: `[batch, tokens, dim] -> [batch, tokens, dim]`, token 0 the class token.

    Head token `h` is the mean over all tokens of channel group `h`, projected to `dim`
    (`ht_proj`), normalised per group (`ht_norm`, LayerNorm eps 1e-5), GELU'd, plus its own
    learned embedding `head_pos_embed`. After attention (`attn`, the shared
    `MultiHeadAttention`) over tokens and head tokens, the head tokens' mean is added to the
    class token and they are dropped.
    """

    num_heads: int
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        batch, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        groups = x.reshape(batch, tokens, heads, head_dim).mean(axis=1)  # [batch, heads, hd]
        ht = nn.Dense(dim, kernel_init=dense_init, dtype=self.dtype, name='ht_proj')(groups)
        ht = ht.reshape(batch, heads, heads, head_dim)
        ht = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='ht_norm')(ht)
        ht = nn.gelu(ht, approximate=False).reshape(batch, heads, dim)
        pos = self.param('head_pos_embed', dense_init, (1, heads, dim))
        ht = ht + pos.astype(ht.dtype)
        y = layers.MultiHeadAttention(
            heads, dropout_rate=self.attn_drop_rate, qkv_bias=self.qkv_bias,
            impl=self.attn_impl, dtype=self.dtype, kernel_init=dense_init, name='attn',
        )(jnp.concatenate([x, ht], axis=1), deterministic=deterministic)
        cls = layers.tokens(y, 0, 1) + layers.tokens(y, tokens).mean(axis=1, keepdims=True)
        y = jnp.concatenate([cls, layers.tokens(y, 1, tokens)], axis=1)
        return nn.Dropout(self.drop_rate)(y, deterministic=deterministic)


class DHVTBlock(layers.AttentionOptions):
    """Pre-norm block, HI-MHSA then DAFF: `[batch, 1 + rows * cols, dim]` in and out.

    `hi_mhsa=False` / `daff=False` use DeiT's plain attention / MLP instead (ablations).
    """

    num_heads: int
    mlp_dim: int
    grid: tuple[int, int]
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    hi_mhsa: bool = True
    daff: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        drop_path = layers.DropPath(self.drop_path_rate)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm1')(x)
        if self.hi_mhsa:
            y = HeadInteractingAttention(self.num_heads, self.qkv_bias, **self.attention_options(),
                                         name='attn')(y, deterministic=not train)
        else:
            y = layers.MultiHeadAttention(
                self.num_heads, dropout_rate=self.attn_drop_rate, qkv_bias=self.qkv_bias,
                impl=self.attn_impl, dtype=self.dtype, kernel_init=dense_init, name='attn',
            )(y, deterministic=not train)
            y = nn.Dropout(self.drop_rate)(y, deterministic=not train)
        x = x + drop_path(y, deterministic=not train)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm2')(x)
        if self.daff:
            y = DynamicAggregationFeedForward(self.mlp_dim, self.grid, self.dtype, name='mlp')(
                y, train=train)
        else:
            y = layers.MlpBlock(self.mlp_dim, act_layer='gelu', dtype=self.dtype,
                                kernel_init=dense_init, bias_init=nn.initializers.zeros,
                                name='mlp')(y, deterministic=not train)
        return x + drop_path(y, deterministic=not train)


class DHVT(layers.AttentionOptions, contract.Family):
    """DHVT: images `[batch, height, width, in_chans]` -> logits `[batch, num_classes]`.

    Options use the authors' (timm) names. `patch_size` is 2, 4 or 16; the image sides must be
    multiples of it. `drop_rate` drops the attention output (the authors' DAFF ignores it).
    `num_classes=0` returns the class token's features `[batch, embed_dim]`.

    For ablations, `sope`, `daff` and `hi_mhsa` switch each component off in favour of DeiT's
    counterpart (the authors' `apply_dhvt=False` model): a linear patch embedding plus a learned
    absolute position embedding, the GELU MLP, plain multi-head attention. All three off is a
    DeiT / ViT with a class token.
    """

    num_classes: int = 100
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    in_chans: int = 3
    sope: bool = True
    daff: bool = True
    hi_mhsa: bool = True

    # The authors' normalisation for every dataset (CIFAR at 32 px uncropped: crop_pct 1).
    stem_layers = r'(patch_embed|cls|pos_embed)(/|$)'
    block_layers = ((r'blocks_(\d+)/', ()),)
    feature_modules = r'blocks_\d+'
    num_prefix_tokens = 1
    feature_norm = 'norm'
    default_preprocessing = contract.Preprocessing(
        crop_pct=0.875, interpolation='bicubic', **NORMALIZATIONS['imagenet'])
    no_weight_decay = ('pos_embedding', 'cls')
    # DAFF (`mlp` with convolutions) and the head tokens' projection stay whole.
    model_splits = (*contract.attention_splits('attn'), *contract.mlp_splits('mlp'),
                    *contract.replicated('mlp', r'attn/ht_(norm|proj)', r'norm\d?',
                                         'patch_embed', 'pos_embed', 'head'),
                    contract.Split('/(cls|head_pos_embed)$'))
    short_names = contract.ShortNames('DHVT', ('dhvt_*',), lambda n: n.removeprefix('dhvt_'))

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(
            convert=_from_authors, resize=_resize,
            layouts="the authors' PyTorch state dict (ArieSeirack/DHVT), or vit_jax's own names")

    def __post_init__(self) -> None:
        if self.patch_size not in SOPE_CONVS:
            raise ModelError(f'DHVT patch_size={self.patch_size} is not supported: SOPE takes '
                             f'patch_size in {sorted(SOPE_CONVS)}')
        contract.check_choices((('attn_impl', self.attn_impl, layers.ATTENTION_IMPLS),
                                ('dtype', self.dtype, contract.DTYPES)))
        if self.embed_dim % self.num_heads:
            raise ModelError(f'embed_dim={self.embed_dim} is not divisible by '
                             f'num_heads={self.num_heads}')
        _check_image_size(self.img_size, self.patch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != self.in_chans:
            raise ModelError(
                f'expected images [batch, height, width, {self.in_chans}], got shape '
                f'{tuple(images.shape)}; convert them to {self.in_chans} channels (channels last)')
        for size in images.shape[1:3]:
            _check_image_size(size, self.patch_size)
        if self.sope:
            x = SequentialPatchEmbed(self.embed_dim, self.patch_size, self.dtype,
                                     name='patch_embed')(images, train=train)
        else:
            x = layers.PatchEmbed(self.embed_dim, self.patch_size, in_chans=self.in_chans,
                                  dtype=self.dtype, kernel_init=dense_init,
                                  name='patch_embed')(images)
        batch, rows, cols, dim = x.shape
        cls = self.param('cls', dense_init, (1, 1, dim))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, dim)),
                             x.reshape(batch, rows * cols, dim)], axis=1)
        if not self.sope:
            x = layers.LearnedPositionEmbedding(name='pos_embed')(x)
        for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
            x = layers.remat_block(DHVTBlock)(
                self.num_heads, int(self.embed_dim * self.mlp_ratio), (rows, cols),
                qkv_bias=self.qkv_bias, drop_path_rate=rate, hi_mhsa=self.hi_mhsa,
                daff=self.daff, **self.attention_options(), name=f'blocks_{i}')(x, train)
            x = nn.with_logical_constraint(x, ('batch', 'tokens', 'embed'))
        x = layers.token(nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(x), 0)
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype,
                                      kernel_init=dense_init)


def _check_image_size(size: int, patch_size: int) -> None:
    if size < patch_size or size % patch_size:
        below = max(patch_size, size // patch_size * patch_size)
        raise ModelError(
            f'image size {size} is not a multiple of the DHVT patch size {patch_size}; use '
            f'{below} or {below + patch_size}')


# ----------------------------------------------------------------------------- variants

# The authors' normalisation (timm's IMAGENET_DEFAULT_MEAN/STD) for every dataset; CIFAR images
# are used at 32 px uncropped, the others resized to 256 and centre-cropped to 224.
_SIZES = {'tiny': 192, 'small': 384}
# dataset -> img_size, num_classes (CIFAR-100, DomainNet, ImageNet-1k), heads (tiny, small),
# crop_pct.
_DATASETS = {
    'cifar': (32, 100, (4, 8), 1.0),
    'domain': (224, 345, (4, 6), 0.875),
    'imagenet': (224, 1000, (3, 6), 0.875),
}
_PATCHES = {'cifar': (4, 2), 'domain': (16,), 'imagenet': (16,)}


def _register_variants() -> None:
    for dataset, (img_size, num_classes, heads, crop_pct) in _DATASETS.items():
        for (size, embed_dim), num_heads in zip(_SIZES.items(), heads, strict=True):
            for patch_size in _PATCHES[dataset]:
                register(f'dhvt_{size}_{dataset}_patch{patch_size}', DHVT,
                         pretrained_cfg={'crop_pct': crop_pct},
                         num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         embed_dim=embed_dim, depth=12, num_heads=num_heads, mlp_ratio=4.0)


_register_variants()


# ----------------------------------------------------------------------------- weights


def _torch_name(name: str) -> str:
    """`blocks.3.mlp.bn1` -> `blocks_3/mlp/bn1`; `patch_embed.proj.2.1` -> `patch_embed/bn_1`;
    DeiT's `patch_embed.proj` -> `patch_embed`, `blocks.0.mlp.fc1` -> `blocks_0/mlp/Dense_0`."""
    name = re.sub(r'^patch_embed\.proj\.(\d+)\.([01])',
                  lambda m: f'patch_embed.{("conv", "bn")[int(m[2])]}_{int(m[1]) // 2}', name)
    name = re.sub(r'^patch_embed\.proj$', 'patch_embed', name)
    name = re.sub(r'\.mlp\.fc([12])$', lambda m: f'.mlp.Dense_{int(m[1]) - 1}', name)
    return re.sub(r'^blocks\.(\d+)', r'blocks_\1', name).replace('.', '/')


_LEAVES = {'running_mean': 'batch_stats/{}/mean', 'running_var': 'batch_stats/{}/var',
           'bias': 'params/{}/bias', 'beta': 'params/{}/bias', 'alpha': 'params/{}/scale'}


def _from_authors(arrays: convert.Flat, model: DHVT) -> convert.Flat | None:
    """The authors' state dict (SyncBatchNorm or BatchNorm names; with components switched
    off, DeiT's names for them) -> `DHVT` flat arrays."""
    if 'cls_token' not in arrays:
        return None
    out: convert.Flat = {}
    for name, value in arrays.items():
        module, _, leaf = name.rpartition('.')
        if leaf == 'num_batches_tracked' or re.search(r'\.attn\.(qkv|proj)$', module):
            continue
        if name == 'cls_token':
            out['params/cls'] = value
        elif name == 'pos_embed':  # DeiT's absolute position embedding (SOPE off)
            out['params/pos_embed/pos_embedding'] = value
        elif leaf == 'pos_embed':
            out[f'params/{_torch_name(module)}/head_pos_embed'] = value
        elif leaf == 'weight':
            kind = {4: ('kernel', convert.conv), 2: ('kernel', convert.linear),
                    1: ('scale', np.asarray)}[value.ndim]
            out[f'params/{_torch_name(module)}/{kind[0]}'] = kind[1](value)
        else:
            out[_LEAVES[leaf].format(_torch_name(module))] = value.reshape(-1)
    for i in range(model.depth):
        p = f'blocks.{i}.attn.'
        if p + 'qkv.weight' in arrays:
            out.update(convert.attention(
                f'params/blocks_{i}/attn' + '/attn' * model.hi_mhsa, arrays[p + 'qkv.weight'],
                arrays.get(p + 'qkv.bias'), arrays[p + 'proj.weight'], arrays[p + 'proj.bias'],
                model.num_heads))
    return out


def _resize(key: str, value: np.ndarray, shape: tuple[int, ...],
            model: DHVT) -> np.ndarray | None:
    """The learned position embedding `[1, 1 + n * n, dim]` of DeiT's patch embedding (`sope`
    off) for another grid: the class token's entry kept, the grid resampled bicubically as
    timm's `resample_abs_pos_embed`."""
    if key != 'params/pos_embed/pos_embedding' or value.shape[-1] != shape[-1]:
        return None
    side = model.img_size // model.patch_size
    return layers.resample_pos_embed(value, (side, side), 1, 'bicubic')

