"""Building blocks shared by every model family: attention, MLP, drop-path, patch embedding,
position embeddings, activations, and the resampling of learned tables (position embeddings,
relative position bias tables) to another grid. Each idea lives here once."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from vit_jax.errors import ModelError

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),  # the original ViT code (flax default)
    'gelu': lambda x: nn.gelu(x, approximate=False),  # exact erf GELU (timm, PyTorch)
    'relu': nn.relu,
    'silu': nn.silu,
}
ATTENTION_IMPLS = ('fused', 'explicit')
HEADS_AXES = ('batch', 'tokens', 'heads', None)  # logical axes of [batch, tokens, heads, head_dim]
# cuDNN's fused attention: the input dtypes it takes, and the multiple its sequence lengths must
# be (other lengths, e.g. ViT's 197 tokens, it refuses).
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_TOKENS = 16
# The primitive of cuDNN's attention forward in training: its output and softmax statistics.
CUDNN_ATTENTION_FORWARD = 'dot_product_attention_fwd_wrapper'


# timm's and the DeiT-family authors' weight init for linear and conv layers.
trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


def token(x: Array, index: int) -> Array:
    """Token `index` of `x` `[batch, tokens, dim]` -> `[batch, dim]`, as a static slice.

    `x[:, index]` becomes a gather when the batch size is symbolic (`jax.export`, jax2tf), and
    TensorFlow Lite converts no such gather; a slice it converts."""
    return jax.lax.index_in_dim(x, index, axis=1, keepdims=False)


def tokens(x: Array, start: int, stop: int | None = None) -> Array:
    """Tokens `start:stop` of `x` `[batch, tokens, dim]`, as a static slice (see `token`)."""
    return jax.lax.slice_in_dim(x, start, stop, axis=1)


def classifier_head(x: Array, num_classes: int, *, dtype: Dtype,
                    kernel_init: nn.initializers.Initializer = nn.initializers.zeros,
                    bias_init: nn.initializers.Initializer = nn.initializers.zeros) -> Array:
    """Pooled features `[batch, dim]` -> float32 logits `[batch, num_classes]` through a Dense
    named 'head' in the calling module (the family contract's `head_names`); the features,
    in float32, when `num_classes` is 0."""
    if num_classes:
        x = nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
                     name='head')(x)
    return nn.with_logical_constraint(x.astype(jnp.float32), ('batch', 'classes'))


def batch_norm(train: bool, name: str, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (its momentum 0.1 is flax's 0.9, eps 1e-5); statistics
    in the `batch_stats` collection, updated when `train`."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        name=name)


def get_activation(name: str) -> Callable[[Array], Array]:
    """Returns the activation function called `name` (a key of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ModelError(f'unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}')
    return ACTIVATIONS[name]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of an example with probability `rate`.

    Kept examples are scaled by 1 / (1 - rate); uses the 'dropout' RNG stream. A `rate` given
    to the call overrides the field and may be traced (a per-layer rate scanned over by
    `nn.scan`); a traced rate of 0 keeps every example unchanged, at the cost of the draw.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool, rate: float | Array | None = None,
                 ) -> Array:
        rate = self.rate if rate is None else rate
        if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
            return x
        keep = 1.0 - rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class MlpBlock(nn.Module):
    """Transformer feed-forward block: Dense_0 -> activation -> dropout -> Dense_1 -> dropout.

    `[batch, ..., dim] -> [batch, ..., out_dim or dim]`; the hidden units carry the logical
    axis 'mlp' (split over the mesh's `model` axis).
    """

    hidden_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, dtype=self.dtype, kernel_init=self.kernel_init,
            bias_init=self.bias_init, name=name)
        x = dense(self.hidden_dim, 'Dense_0')(x)
        x = nn.with_logical_constraint(x, ('batch', *[None] * (x.ndim - 2), 'mlp'))
        x = get_activation(self.act_layer)(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim, 'Dense_1')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


def attention_weights(q: Array, k: Array, bias: Array | None = None,
                      mask: Array | None = None) -> Array:
    """Softmax attention weights `[batch, heads, q_tokens, k_tokens]`, computed in float32.

    `q`, `k`: `[batch, tokens, heads, head_dim]`.
    """
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * (q.shape[-1] ** -0.5)
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


def dot_product_attention(q: Array, k: Array, v: Array, bias: Array | None = None,
                          mask: Array | None = None) -> Array:
    """Softmax attention: `q` `[batch, q_tokens, heads, head_dim]`, `k`, `v` `[batch, k_tokens,
    heads, head_dim]` -> `[batch, q_tokens, heads, head_dim]`; `bias`, `mask` broadcastable to
    `[batch, heads, q_tokens, k_tokens]`.

    Lowered for a CUDA GPU, bfloat16 and float16 attention without bias or mask runs cuDNN's
    fused kernel forward and backward: the tokens are zero-padded to a multiple of
    `CUDNN_TOKENS` and their count passed as the sequence lengths, so padded keys get no weight
    and padded queries are cut off. Elsewhere (CPU, TPU), and where cuDNN refuses (no cuDNN
    library, a head dim it does not take), XLA's attention (`jax.nn.dot_product_attention`).
    """
    xla = functools.partial(jax.nn.dot_product_attention, bias=bias, mask=mask,
                            implementation='xla')
    if q.dtype not in CUDNN_DTYPES or bias is not None or mask is not None:
        return xla(q, k, v)
    cudnn = functools.partial(padded_attention, implementation='cudnn')
    try:
        return jax.lax.platform_dependent(q, k, v, cuda=cudnn, default=xla)
    except (RuntimeError, NotImplementedError):  # raised while tracing the cuDNN call
        return xla(q, k, v)


def padded_attention(q: Array, k: Array, v: Array, implementation: str) -> Array:
    """`jax.nn.dot_product_attention` with `implementation` over tokens zero-padded to a
    multiple of `CUDNN_TOKENS`, their counts passed as the sequence lengths, and the padded
    queries cut off (shapes as `dot_product_attention`)."""
    batch, q_tokens, k_tokens = q.shape[0], q.shape[1], k.shape[1]

    def pad(x: Array) -> Array:
        return jnp.pad(x, ((0, 0), (0, -x.shape[1] % CUDNN_TOKENS), (0, 0), (0, 0)))

    lengths = {}
    if q_tokens % CUDNN_TOKENS or k_tokens % CUDNN_TOKENS:
        lengths = dict(query_seq_lengths=jnp.full((batch,), q_tokens, jnp.int32),
                       key_value_seq_lengths=jnp.full((batch,), k_tokens, jnp.int32))
    y = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), implementation=implementation,
                                     **lengths)
    return tokens(y, 0, q_tokens)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with the original ViT parameter layout.

    Parameters: `query`, `key`, `value` (kernel `[dim, heads, head_dim]`) and `out`
    (kernel `[heads, head_dim, dim]`), as in flax's `MultiHeadDotProductAttention`.

    `impl='fused'` calls `dot_product_attention` (cuDNN's fused kernel on GPU);
    `impl='explicit'` computes the softmax step by step and stores the attention weights
    `[batch, heads, tokens, tokens]` in the 'intermediates' collection under
    'attention_weights' (read them with `apply(..., mutable=['intermediates'])`). Both give the
    same numbers. Attention dropout needs the weights, so while it is active the explicit path
    is used. Queries, keys, values and the heads' outputs `[batch, tokens, heads, head_dim]`
    carry the logical axis 'heads' (split over the mesh's `model` axis).
    """

    num_heads: int
    dropout_rate: float = 0.0
    qkv_bias: bool = True
    impl: str = 'fused'
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: Array, *, bias: Array | None = None, mask: Array | None = None,
                 deterministic: bool = True) -> Array:
        """`x`: `[batch, tokens, dim]`; `bias`, `mask`: `[batch, heads, tokens, tokens]`
        (broadcastable)."""
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ModelError(f'width {dim} is not divisible by num_heads={self.num_heads}')
        head_dim = dim // self.num_heads

        def proj(name: str) -> Array:  # [batch, tokens, heads, head_dim]
            y = nn.DenseGeneral((self.num_heads, head_dim), use_bias=self.qkv_bias,
                                dtype=self.dtype, kernel_init=self.kernel_init, name=name)(x)
            return nn.with_logical_constraint(y, HEADS_AXES)

        q, k, v = proj('query'), proj('key'), proj('value')
        dropping = self.dropout_rate > 0.0 and not deterministic
        if self.impl == 'fused' and not dropping:
            if bias is not None:
                bias = bias.astype(q.dtype)
            y = dot_product_attention(q, k, v, bias=bias, mask=mask)
        else:
            weights = attention_weights(q, k, bias, mask)
            self.sow('intermediates', 'attention_weights', weights)
            weights = nn.Dropout(self.dropout_rate, broadcast_dims=())(
                weights, deterministic=deterministic)
            y = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
        y = nn.with_logical_constraint(y, HEADS_AXES)
        return nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype,
                               kernel_init=self.kernel_init, name='out')(y)


class AttentionOptions(nn.Module):
    """The options every module with attention shares, from a family's top-level module down to
    its blocks, keyword-only (after a module's own fields) and named as timm names them:
    `drop_rate` drops the attention output and the MLP's activations (where else, each family's
    docstring says), `attn_drop_rate` the attention weights; `attn_impl` is one of
    `ATTENTION_IMPLS`, `dtype` the compute dtype. A module hands them to the blocks it builds
    with `attention_options()`."""

    _: dataclasses.KW_ONLY
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    attn_impl: str = 'fused'
    dtype: str = 'float32'

    def attention_options(self) -> dict[str, Any]:
        """These options as keyword arguments for a child module."""
        return {name: getattr(self, name) for name in ATTENTION_OPTIONS}


# The names of those options (flax adds `parent` and `name` to every module).
ATTENTION_OPTIONS = tuple(f.name for f in dataclasses.fields(AttentionOptions)
                          if f.name not in ('parent', 'name'))


def save_matmuls(prim: jax.extend.core.Primitive, *args: Any, **params: Any) -> bool:
    """The remat policy of every family's blocks: the backward pass keeps the outputs of
    matmuls without batch dimensions (the Dense layers and 1x1 convolutions) and of cuDNN's
    fused attention, and recomputes the rest from them (LayerNorm, BatchNorm, activations,
    residual adds, depthwise convolutions, XLA's attention)."""
    return prim.name == CUDNN_ATTENTION_FORWARD or _pointwise_conv(prim, *args, **params) or \
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)


def _pointwise_conv(prim: jax.extend.core.Primitive, *args: Any, **params: Any) -> bool:
    """Whether `prim` is a 1x1 convolution over all channels: a matmul per pixel."""
    if prim.name != 'conv_general_dilated' or params['feature_group_count'] != 1:
        return False
    kernel, layout = args[1], params['dimension_numbers'].rhs_spec
    return all(kernel.shape[d] == 1 for d in layout[2:])


def remat_block(block: type[nn.Module], full: bool = False,
                static_args: int = 1) -> type[nn.Module]:
    """`block`, whose `__call__(x, deterministic, ...)` takes `deterministic` (or `train`)
    second and `static_args - 1` more static (hashable) arguments after it, under `nn.remat`:
    with `full`, its input alone is kept for the backward pass (~1/3 more compute), else what
    `save_matmuls` keeps."""
    return nn.remat(block, static_argnums=tuple(range(2, 2 + static_args)),
                    policy=None if full else save_matmuls)


def check_images(x: Array, in_chans: int) -> None:
    """Raises a `ModelError` unless `x` is `[batch, height, width, in_chans]`."""
    if x.ndim != 4 or x.shape[-1] != in_chans:
        raise ModelError(
            f'expected images [batch, height, width, {in_chans}], got shape {tuple(x.shape)}; '
            f'convert grayscale/RGBA images to {in_chans} channels (channels last)')


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> float:
    """Output length of a convolution along one axis (fractional when the stride does not fit)."""
    return (size + 2 * padding - kernel) / stride + 1


class PatchEmbed(nn.Module):
    """Linear patch embedding as a strided convolution with parameters `kernel`, `bias`.

    `[batch, height, width, in_chans] -> [batch, height', width', dim]`. With `kernel_size`
    larger than `patch_size` (and `padding`), patches overlap: kernel 20, stride 16, padding 2
    gives the same 14×14 grid at 224 px as non-overlapping 16×16 patches.
    """

    dim: int
    patch_size: int
    kernel_size: int | None = None
    padding: int = 0
    in_chans: int = 3
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_images(x, self.in_chans)
        k = self.kernel_size or self.patch_size
        for size in x.shape[1:3]:
            if not conv_output_size(size, k, self.patch_size, self.padding).is_integer():
                raise ModelError(
                    f'image size {size} does not fit patch size {self.patch_size} (kernel {k}, '
                    f'padding {self.padding}); use a multiple of {self.patch_size}, e.g. '
                    f'{valid_sizes_hint(size, k, self.patch_size, self.padding)}')
        kernel = self.param('kernel', self.kernel_init, (k, k, self.in_chans, self.dim))
        bias = self.param('bias', nn.initializers.zeros, (self.dim,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jax.lax.conv_general_dilated(
            x, kernel, window_strides=(self.patch_size,) * 2, padding=[(self.padding,) * 2] * 2,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return y + bias


def valid_sizes_hint(size: int, kernel: int, stride: int, padding: int) -> str:
    """The two image sizes nearest to `size` that a patch embedding accepts, as text."""
    base = kernel - 2 * padding
    below = max(base, base + (size - base) // stride * stride)
    return f'{below} or {below + stride}'


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned position embedding `pos_embedding` `[1, tokens, dim]` (init N(0, 0.02))."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        return x + pe.astype(x.dtype)


def sincos_1d(length: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 1-D sine-cosine embedding `[1, length, dim]` (sines in the first half)."""
    if dim % 2:
        raise ModelError(f'sincos1d position embedding needs an even width, got {dim}')
    omega = 1.0 / temperature ** (np.arange(dim // 2) / (dim // 2))
    angles = np.arange(length)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)[None].astype(np.float32)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine embedding `[1, height * width, dim]` (as big_vision and MoCo v3).

    The width is split in four: sin(x), cos(x), sin(y), cos(y).
    """
    if dim % 4:
        raise ModelError(f'sincos2d position embedding needs a width divisible by 4, got {dim}')
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))
    ax = x.reshape(-1)[:, None] * omega[None, :]
    ay = y.reshape(-1)[:, None] * omega[None, :]
    emb = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)
    return emb[None].astype(np.float32)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to `rate` (as timm)."""
    return [float(r) for r in np.linspace(0.0, rate, depth)]


# ----------------------------------------------------------------------------- resampling tables

RESAMPLE_METHODS = ('zoom_linear', 'bilinear', 'bicubic')


def _torch_bicubic_matrix(src: int, dst: int, a: float = -0.75) -> np.ndarray:
    """`[dst, src]` weights of PyTorch's `interpolate(mode='bicubic', align_corners=False)`
    along one axis (Keys' cubic with a = -0.75, edge samples repeated)."""
    out = np.zeros((dst, src))
    for i in range(dst):
        x = (i + 0.5) * src / dst - 0.5
        base = int(np.floor(x))
        t = x - base
        for k, d in enumerate((1 + t, t, 1 - t, 2 - t)):
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((d - 5) * d + 8) * d * a - 4 * a
            out[i, min(max(base - 1 + k, 0), src - 1)] += w
    return out


def resample_grid(grid: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """A table laid out on a grid `[rows, cols, channels]` -> `[size[0], size[1], channels]`.

    `method`: 'zoom_linear' is `scipy.ndimage.zoom` of order 1 (corners kept; the original ViT
    fine-tuning code), 'bilinear' is `jax.image.resize` (half-pixel centres, antialiased when
    shrinking), 'bicubic' is PyTorch's `interpolate(mode='bicubic', align_corners=False)` (what
    timm uses for position embeddings and relative position bias tables).
    """
    if method not in RESAMPLE_METHODS:
        raise ModelError(f'unknown resampling {method!r}; choose one of {RESAMPLE_METHODS}')
    rows, cols, channels = grid.shape
    if (rows, cols) == tuple(size):
        return grid
    if method == 'zoom_linear':
        return scipy.ndimage.zoom(grid, (size[0] / rows, size[1] / cols, 1), order=1)
    if method == 'bilinear':
        return np.asarray(jax.image.resize(jnp.asarray(grid), (*size, channels), 'bilinear'))
    out = np.einsum('ir,rcd,jc->ijd', _torch_bicubic_matrix(rows, size[0]), grid,
                    _torch_bicubic_matrix(cols, size[1]))
    return out.astype(grid.dtype)


def resample_pos_embed(table: np.ndarray, grid: tuple[int, int], num_prefix_tokens: int,
                       method: str) -> np.ndarray | None:
    """A learned position embedding `[1, prefix + n * n, dim]` for the token `grid` `(rows,
    cols)`: the prefix tokens' entries (a class token) kept, the square grid resampled by
    `resample_grid`; None when the old grid is not square."""
    tokens, old = table[:, :num_prefix_tokens], table[0, num_prefix_tokens:]
    side = int(round(np.sqrt(len(old))))
    if side * side != len(old):
        return None
    new = resample_grid(old.reshape(side, side, -1), grid, method)
    return np.concatenate([tokens, new.reshape(1, grid[0] * grid[1], -1)], axis=1)
