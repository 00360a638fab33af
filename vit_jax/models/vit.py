"""Vision Transformer (Dosovitskiy et al., 2021) with the original checkpoint parameter tree.

Parameter names are those of google-research/vision_transformer's published `.npz` files:
`embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `Transformer/encoder_norm`, `pre_logits`, `head`. They are given explicitly:
flax numbers auto-named modules per type, which would no longer match those files.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vit_jax.errors import ModelError
from vit_jax.models import layers
from vit_jax.models.registry import register

CLASSIFIERS = ('token', 'gap')
POS_EMBEDS = ('learned', 'sincos1d', 'sincos2d', 'none')
DTYPES = ('float32', 'bfloat16', 'float16')


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: `[batch, tokens, dim] -> [batch, tokens, dim]`."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    attn_impl: str = 'fused'
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        drop_path = layers.DropPath(self.drop_path_rate)
        y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
        y = layers.MultiHeadAttention(
            self.num_heads, dropout_rate=self.attn_dropout_rate, impl=self.attn_impl,
            dtype=self.dtype, name='MultiHeadDotProductAttention_1')(y, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + drop_path(y, deterministic=deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
        y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, act_layer=self.act_layer,
                            dtype=self.dtype, name='MlpBlock_3')(y, deterministic=deterministic)
        return nn.with_logical_constraint(x + drop_path(y, deterministic=deterministic),
                                          ('batch', 'tokens', 'embed'))


class Encoder(nn.Module):
    """Position embedding, `depth` blocks and the final LayerNorm.

    `[batch, prefix + h * w, dim] -> [batch, prefix + h * w, dim]`, where the first
    `num_prefix_tokens` tokens (the class token) are not patches: fixed sine-cosine embeddings
    give them zeros, a learned embedding covers them too (as the original).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    grid: tuple[int, int]
    num_prefix_tokens: int = 1
    pos_embed: str = 'learned'
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    attn_impl: str = 'fused'
    dtype: str = 'float32'
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.pos_embed == 'learned':
            x = layers.LearnedPositionEmbedding(name='posembed_input')(x)
        elif self.pos_embed in ('sincos1d', 'sincos2d'):
            h, w, dim = *self.grid, x.shape[-1]
            pe = layers.sincos_1d(h * w, dim) if self.pos_embed == 'sincos1d' else \
                layers.sincos_2d(h, w, dim)
            pe = np.pad(pe, ((0, 0), (self.num_prefix_tokens, 0), (0, 0)))
            x = x + jnp.asarray(pe, x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        # Remat keeps only each block's input for the backward pass and recomputes the rest.
        block = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
        for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
            x = block(
                self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                attn_dropout_rate=self.attn_dropout_rate, drop_path_rate=rate,
                act_layer=self.act_layer, attn_impl=self.attn_impl, dtype=self.dtype,
                name=f'encoderblock_{i}')(x, not train)
        return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
    """ViT: images `[batch, height, width, in_chans]` -> logits `[batch, num_classes]`.

    Options use timm's names. `patch_kernel_size` > `patch_size` (with `patch_padding`) makes
    patches overlap. `dtype` is the compute dtype; parameters stay float32. `num_classes=0`
    returns the pooled features `[batch, embed_dim or representation_size]`. `remat=True`
    recomputes each block's activations in the backward pass (less memory, ~1/3 more compute).
    Activations carry logical axis names (`batch`, `tokens`, `embed`, ...) that the trainer maps
    onto the device mesh (`vit_jax.train.sharding`).
    """

    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    classifier: str = 'token'
    pos_embed: str = 'learned'
    patch_kernel_size: int | None = None
    patch_padding: int = 0
    representation_size: int | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    attn_impl: str = 'fused'
    dtype: str = 'float32'
    in_chans: int = 3
    head_bias_init: float = 0.0
    remat: bool = False

    def __post_init__(self) -> None:
        for option, value, allowed in (
                ('classifier', self.classifier, CLASSIFIERS),
                ('pos_embed', self.pos_embed, POS_EMBEDS),
                ('act_layer', self.act_layer, tuple(layers.ACTIVATIONS)),
                ('attn_impl', self.attn_impl, layers.ATTENTION_IMPLS),
                ('dtype', self.dtype, DTYPES)):
            if value not in allowed:
                raise ModelError(f'{option}={value!r} is not supported; choose one of {allowed}')
        if self.embed_dim % self.num_heads:
            raise ModelError(f'embed_dim={self.embed_dim} is not divisible by '
                             f'num_heads={self.num_heads}')
        self.grid  # noqa: B018 -- validates img_size against the patch embedding
        super().__post_init__()

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid `(rows, cols)` that `img_size` gives."""
        kernel = self.patch_kernel_size or self.patch_size
        n = layers.conv_output_size(self.img_size, kernel, self.patch_size, self.patch_padding)
        if n < 1 or not n.is_integer():
            hint = layers.valid_sizes_hint(self.img_size, kernel, self.patch_size,
                                           self.patch_padding)
            raise ModelError(
                f'img_size={self.img_size} does not fit patch_size={self.patch_size} '
                f'(kernel {kernel}, padding {self.patch_padding}); use img_size={hint}')
        return int(n), int(n)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = layers.PatchEmbed(self.embed_dim, self.patch_size, self.patch_kernel_size,
                              self.patch_padding, in_chans=self.in_chans, dtype=self.dtype,
                              name='embedding')(images)
        batch, h, w, dim = x.shape
        if self.pos_embed == 'learned' and (h, w) != self.grid:
            raise ModelError(
                f'this model has a learned position embedding for {self.img_size}px images '
                f'({self.grid[0]}x{self.grid[1]} patches) but got {images.shape[1]}x'
                f'{images.shape[2]}px; resize the images, or create the model with '
                f'img_size={images.shape[1]} (and resize loaded weights with vit_jax.weights)')
        x = nn.with_logical_constraint(x.reshape(batch, h * w, dim), ('batch', 'tokens', 'embed'))
        prefix = 1 if self.classifier == 'token' else 0
        if prefix:
            cls = self.param('cls', nn.initializers.zeros, (1, 1, dim))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, dim)), x], 1)
        x = Encoder(
            self.depth, self.num_heads, int(self.embed_dim * self.mlp_ratio), grid=(h, w),
            num_prefix_tokens=prefix, pos_embed=self.pos_embed, dropout_rate=self.drop_rate,
            attn_dropout_rate=self.attn_drop_rate, drop_path_rate=self.drop_path_rate,
            act_layer=self.act_layer, attn_impl=self.attn_impl, dtype=self.dtype,
            remat=self.remat, name='Transformer')(x, train=train)
        x = x[:, 0] if self.classifier == 'token' else x.mean(axis=1)
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                  name='pre_logits')(x))
        if self.num_classes:
            x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.constant(self.head_bias_init), name='head')(x)
        return nn.with_logical_constraint(x.astype(jnp.float32), ('batch', 'classes'))


# The original model zoo: (width, depth, heads) per size, and dropout as the original configs set.
_SIZES = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16),
          'H': (1280, 32, 16)}
_ZOO = {'Ti_16': 0.0, 'S_16': 0.0, 'S_32': 0.0, 'B_8': 0.0, 'B_16': 0.0, 'B_32': 0.0,
        'L_16': 0.1, 'L_32': 0.0, 'H_14': 0.1}


def _register_zoo() -> None:
    for variant, drop_rate in _ZOO.items():
        size, patch = variant.split('_')
        width, depth, heads = _SIZES[size]
        kwargs = dict(patch_size=int(patch), embed_dim=width, depth=depth, num_heads=heads,
                      drop_rate=drop_rate)
        register(f'ViT-{variant}', VisionTransformer, **kwargs)
        register(f'ViT-{variant}-gap-norep', VisionTransformer, classifier='gap', **kwargs)
    register('testing', VisionTransformer, patch_size=16, embed_dim=10, depth=1, num_heads=2,
             mlp_ratio=1.0, drop_rate=0.1)


_register_zoo()
