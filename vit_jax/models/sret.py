"""Sliced Recursive Transformer (SReT; Shen, Liu and Xing, ECCV 2022), as the authors' code.

A convolutional stem (three 3×3 stride-2 convolutions, each with BatchNorm and ReLU) turns an
image into a grid of tokens at 1/8 of its size, with a learned 2-D position embedding; three
stages of recursive transformer blocks follow, joined by depthwise stride-2 convolutions that
halve the grid and widen the tokens; no class token: average pool -> LayerNorm -> head.

Recursion: each stage has `recursive_num` shared blocks, each applied `depth / recursive_num`
times (twice in every released model). Every application is followed by its own non-linear
projection layer (NLL: LayerNorm -> MLP, with a residual). Every residual sum is
`a * x + b * branch(x)` with learnable scalars `a`, `b` (learnable residual coefficients).

Sliced group self-attention: the tokens are split into `groups1` contiguous groups on a block's
first pass and `groups2` groups on its recursive passes, attention running within each group.
On a recursive pass with `groups2 > 1` the tokens are shuffled before grouping and put back
afterwards, so that the groups mix. The authors draw that permutation with `torch.randperm` on
every such pass, in training and in evaluation alike. Here it comes from:

- `permutations=[...]` passed to `__call__`: explicit permutations `[tokens]`, one per
  shuffled pass in call order (`SReT.permutation_sizes` lists the lengths); or else
- the 'permute' RNG stream (`rngs={'permute': key}`), a fresh permutation per pass, as the
  authors' code in training and evaluation; the standard train step supplies it; or else
- in evaluation (`train=False`) without either: no permutation (contiguous groups of the
  row-major token order), which keeps evaluation deterministic. Training without either is an
  error rather than a silent change of the method.

Mixed-depth training (`mixed_depth_rate > 0`): in training each recursive pass (the repeated
application of a shared block together with its NLL) is skipped for an example with that
probability, so that every batch trains a mixture of shallow and deep paths through the shared
weights; evaluation always runs the full depth.

Parameter names: `stem/{conv,bn}{1,2,3}`, `pos_embed`, `stage_{s}/block_{r}` (shared blocks),
`stage_{s}/nll_{j}`, `pool_{s}`, `norm`, `head`; BatchNorm statistics in `batch_stats`.
The authors' PyTorch state dicts load with `vit_jax.weights.load` (mapping at the end).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.errors import ModelError
from vit_jax.models import contract, convert, layers
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS

Array = jax.Array
STEM_STRIDE = 8


def pooled_grid(size: int) -> int:
    """Grid side after a 3×3 stride-2 convolution with padding 1."""
    return (size + 1) // 2


def stage_grids(img_size: int, num_stages: int) -> list[int]:
    """Token grid side of each stage for `img_size` px images."""
    grids = [img_size // STEM_STRIDE]
    for _ in range(num_stages - 1):
        grids.append(pooled_grid(grids[-1]))
    return grids


class Coefficient(nn.Module):
    """A learnable scalar (init 1) that multiplies its input: one learnable residual
    coefficient."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x * self.param('scale', nn.initializers.ones, (1,)).astype(x.dtype)


def sliced(fn, x: Array, groups: int, perm: Array | None) -> Array:
    """Applies the token mixer `fn` within `groups` contiguous groups of `x` `[batch, tokens,
    dim]`, after shuffling the tokens by `perm` `[tokens]` (and un-shuffling after), if given."""
    batch, tokens, dim = x.shape
    if perm is not None:
        x = x[:, perm]
    y = fn(x.reshape(batch * groups, tokens // groups, dim)).reshape(batch, tokens, -1)
    return y if perm is None else y[:, jnp.argsort(perm)]


class RecursiveBlock(layers.AttentionOptions):
    """Pre-norm transformer block with sliced group attention and learnable residual
    coefficients: `[batch, tokens, dim] -> [batch, tokens, dim]`."""

    num_heads: int
    mlp_dim: int
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, groups: int,
                 perm: Array | None = None) -> Array:
        drop_path = layers.DropPath(self.drop_path_rate)
        attn = layers.MultiHeadAttention(self.num_heads, dropout_rate=self.attn_drop_rate,
                                         impl=self.attn_impl, dtype=self.dtype, name='attn')
        y = sliced(lambda t: attn(t, deterministic=deterministic),
                   nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm1')(x), groups, perm)
        y = nn.Dropout(self.drop_rate)(y, deterministic=deterministic)
        x = Coefficient(name='residual_attn')(x) + Coefficient(name='branch_attn')(
            drop_path(y, deterministic=deterministic))
        y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.drop_rate, act_layer='gelu',
                            dtype=self.dtype, name='mlp')(
            nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm2')(x),
            deterministic=deterministic)
        x = Coefficient(name='residual_mlp')(x) + Coefficient(name='branch_mlp')(
            drop_path(y, deterministic=deterministic))
        return nn.with_logical_constraint(x, ('batch', 'tokens', 'embed'))


class NonLinearProjection(nn.Module):
    """NLL after each pass of a shared block: `a * x + b * MLP(LN(x))`, `[batch, tokens, dim]`."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, act_layer='gelu',
                            dtype=self.dtype, name='mlp')(
            nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(x),
            deterministic=deterministic)
        return Coefficient(name='residual')(x) + Coefficient(name='branch')(y)


class RecursiveStage(layers.AttentionOptions):
    """`recursive_num` shared blocks, each applied `depth / recursive_num` times and followed
    each time by its own NLL: `[batch, tokens, dim] -> [batch, tokens, dim]`.

    `perms` holds one permutation (or None) per recursive pass, in call order.
    """

    depth: int
    recursive_num: int
    num_heads: int
    groups1: int
    groups2: int
    mlp_ratio: float
    np_mlp_ratio: float
    drop_path_rates: tuple[float, ...]
    mixed_depth_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, perms: Sequence[Array | None], train: bool) -> Array:
        dim = x.shape[-1]
        loops = self.depth // self.recursive_num
        perms = iter(perms)
        for r in range(self.recursive_num):
            block = layers.remat_block(RecursiveBlock, static_args=2)(
                self.num_heads, int(dim * self.mlp_ratio), self.drop_path_rates[r],
                **self.attention_options(), name=f'block_{r}')
            for loop in range(loops):
                nll = NonLinearProjection(int(dim * self.np_mlp_ratio), self.drop_rate,
                                          self.dtype, name=f'nll_{r * loops + loop}')
                if loop == 0:
                    y = block(x, not train, self.groups1)
                    x = nll(y, deterministic=not train)
                    continue
                y = block(x, not train, self.groups2, next(perms))
                y = nll(y, deterministic=not train)
                x = self._mix_depth(x, y) if train and self.mixed_depth_rate else y
        return x

    def _mix_depth(self, x: Array, y: Array) -> Array:
        """Keeps the recursive pass `y` for each example with probability 1 - rate, else `x`."""
        keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.mixed_depth_rate,
                                    (x.shape[0], 1, 1))
        return jnp.where(keep, y, x)


class ConvStem(nn.Module):
    """Three 3×3 stride-2 convolutions (dim/2, dim, dim) with BatchNorm and ReLU:
    `[batch, h, w, in_chans] -> [batch, h/8, w/8, dim]`."""

    dim: int
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        for i, features in enumerate((self.dim // 2, self.dim, self.dim), start=1):
            x = nn.Conv(features, (3, 3), strides=2, padding=((1, 1), (1, 1)), dtype=self.dtype,
                        name=f'conv{i}')(x)
            x = layers.batch_norm(train, f'bn{i}', self.dtype)(x)
            x = nn.relu(x)
        return x


_SHORT_SIZES = {'T': 'tiny', 'LT': 'light_tiny', 'S': 'small'}


def _short_name(name: str) -> str:
    """SReT_T -> tiny, SReT_LT_wo_slice -> light_tiny_wo_slice, SReT_S_distill ->
    small_distill."""
    return '_'.join([_SHORT_SIZES[name.split('_')[1]], *name.split('_')[2:]])


class SReT(layers.AttentionOptions, contract.Family):
    """SReT: images `[batch, height, width, in_chans]` -> logits `[batch, num_classes]`.

    Per-stage options are tuples of three, named as the authors' constructor: token width
    `base_dims[s] * heads[s]`, `depth[s]` NLLs and `recursive_num[s]` shared blocks, attention
    groups `groups1[s]` (first pass) and `groups2[s]` (recursive passes; all ones: the
    no-slice model). `drop_path_rate` follows the authors' schedule (rate * i / total depth,
    block i of a stage taking the i-th rate of that stage's range). `num_classes=0` returns the
    pooled, normalised features. `dtype` is the compute dtype; parameters stay float32. See the
    module docstring for permutations and mixed depth.
    """

    num_classes: int = 1000
    img_size: int = 224
    in_chans: int = 3
    base_dims: tuple[int, ...] = (32, 32, 32)
    depth: tuple[int, ...] = (4, 10, 6)
    recursive_num: tuple[int, ...] = (2, 5, 3)
    heads: tuple[int, ...] = (2, 4, 8)
    groups1: tuple[int, ...] = (8, 4, 1)
    groups2: tuple[int, ...] = (2, 1, 1)
    mlp_ratio: float = 3.6
    np_mlp_ratio: float = 1.0
    drop_path_rate: float = 0.0
    mixed_depth_rate: float = 0.0

    rng_streams = ('dropout', 'permute')
    feature_modules = r'stage_\d+/nll_\d+'
    feature_norm = 'norm'
    # DeiT evaluation: resize to size / 0.875, centre crop, ImageNet mean and std, bicubic.
    # A recursive block and the projection of the same index share a depth; pooling follows
    # its stage.
    stem_layers = r'(stem|pos_embed)/'
    block_layers = ((r'stage_(\d+)/(?:block|nll)_(\d+)/', ()), (r'pool_(\d+)/', (2 ** 30,)))
    default_preprocessing = contract.Preprocessing(
        crop_pct=0.875, interpolation='bicubic', **NORMALIZATIONS['imagenet'])
    no_weight_decay = ('pos_embedding',)
    model_splits = (*contract.attention_splits('attn'), *contract.mlp_splits('mlp'),
                    *contract.replicated('stem', 'pos_embed', r'norm\d?', r'pool_\d+', 'head',
                                         r'(branch|residual)(_attn|_mlp)?'))
    short_names = contract.ShortNames('SReT', ('SReT_*',), _short_name)

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(
            convert=_from_authors, resize=_resize,
            layouts="the authors' PyTorch SReT / RecursiveTransformer state dicts")

    def __post_init__(self) -> None:
        stages = len(self.depth)
        for option in ('base_dims', 'recursive_num', 'heads', 'groups1', 'groups2'):
            if len(getattr(self, option)) != stages:
                raise ModelError(f'{option} has {len(getattr(self, option))} entries but depth '
                                 f'has {stages}; give one per stage')
        for s, (d, r) in enumerate(zip(self.depth, self.recursive_num, strict=True)):
            if r < 1 or d % r:
                raise ModelError(f'stage {s}: depth={d} is not a multiple of recursive_num={r}; '
                                 f'use a recursive_num that divides it')
        contract.check_choices((('attn_impl', self.attn_impl, layers.ATTENTION_IMPLS),
                                ('dtype', self.dtype, contract.DTYPES)))
        if not 0.0 <= self.mixed_depth_rate < 1.0:
            raise ModelError(f'mixed_depth_rate must be in [0, 1), got {self.mixed_depth_rate}')
        check_groups(self.img_size, self.groups1, self.groups2)
        super().__post_init__()

    @property
    def permutation_sizes(self) -> list[int]:
        """Length of each permutation a forward pass draws, in call order."""
        sizes = []
        for s, grid in enumerate(stage_grids(self.img_size, len(self.depth))):
            if self.groups2[s] > 1:
                loops = self.depth[s] // self.recursive_num[s]
                sizes += [grid * grid] * (self.recursive_num[s] * (loops - 1))
        return sizes

    def _permutations(self, given: Sequence[Array] | None, train: bool) -> list[Array | None]:
        sizes = self.permutation_sizes
        if given is not None:
            given = [jnp.asarray(p) for p in given]
            if [p.shape for p in given] != [(n,) for n in sizes]:
                raise ModelError(f'permutations must be {len(sizes)} arrays of lengths {sizes} '
                                 f'(see SReT.permutation_sizes), got shapes '
                                 f'{[tuple(p.shape) for p in given]}')
            return given
        if self.has_rng('permute'):
            return [jax.random.permutation(self.make_rng('permute'), n) for n in sizes]
        if train and sizes:
            raise ModelError("training SReT shuffles tokens on its recursive passes: pass "
                             "rngs={'permute': key} (the standard train step does) or "
                             "permutations=[...]")
        return [None] * len(sizes)

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False,
                 permutations: Sequence[Array] | None = None) -> Array:
        if images.ndim != 4 or images.shape[-1] != self.in_chans:
            raise ModelError(f'expected images [batch, height, width, {self.in_chans}], got '
                             f'shape {tuple(images.shape)}')
        if images.shape[1:3] != (self.img_size, self.img_size):
            raise ModelError(
                f'this model has a learned position embedding for {self.img_size}px images but '
                f'got {images.shape[1]}x{images.shape[2]}px; resize the images, or create the '
                f'model with img_size={images.shape[1]} (vit_jax.weights.load resizes the '
                f'position embedding)')
        perms = iter(self._permutations(permutations, train))
        x = ConvStem(self.base_dims[0] * self.heads[0], self.dtype, name='stem')(images,
                                                                             train=train)
        batch, h, w, dim = x.shape
        x = nn.with_logical_constraint(x.reshape(batch, h * w, dim), ('batch', 'tokens', 'embed'))
        x = layers.LearnedPositionEmbedding(name='pos_embed')(x)
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        total, start = sum(self.depth), 0
        for s, depth in enumerate(self.depth):
            if s:  # depthwise 3x3 stride-2 pooling to the next stage's width
                x = x.reshape(batch, h, w, dim)
                dim = self.base_dims[s] * self.heads[s]
                x = nn.Conv(dim, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                            feature_group_count=x.shape[-1], dtype=self.dtype,
                            name=f'pool_{s - 1}')(x)
                batch, h, w, _ = x.shape
                x = x.reshape(batch, h * w, dim)
            loops = depth // self.recursive_num[s]
            stage_perms = [next(perms) if self.groups2[s] > 1 else None
                           for _ in range(self.recursive_num[s] * (loops - 1))]
            x = RecursiveStage(
                depth, self.recursive_num[s], self.heads[s], self.groups1[s], self.groups2[s],
                self.mlp_ratio, self.np_mlp_ratio,
                drop_path_rates=tuple(self.drop_path_rate * i / total
                                      for i in range(start, start + depth)),
                mixed_depth_rate=self.mixed_depth_rate, **self.attention_options(),
                name=f'stage_{s}')(x, perms=stage_perms, train=train)
            start += depth
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(x.mean(axis=1))
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype)


def check_groups(img_size: int, groups1: Sequence[int], groups2: Sequence[int]) -> None:
    """Raises `ModelError` unless `img_size` gives every stage a token count its groups divide."""
    if img_size % STEM_STRIDE or img_size < STEM_STRIDE:
        raise ModelError(f'img_size={img_size} is not a multiple of {STEM_STRIDE} (the stem '
                         f'stride); use {_valid_sizes(img_size, groups1, groups2)}')
    for s, grid in enumerate(stage_grids(img_size, len(groups1))):
        tokens = grid * grid
        for option, groups in (('groups1', groups1[s]), ('groups2', groups2[s])):
            if groups < 1 or tokens % groups:
                divisors = [g for g in range(1, min(tokens, 64) + 1) if tokens % g == 0]
                raise ModelError(
                    f'img_size={img_size} gives {tokens} tokens ({grid}x{grid}) in stage {s}, '
                    f'which {option}={groups} does not divide; use img_size='
                    f'{_valid_sizes(img_size, groups1, groups2)}, or {option}[{s}] in '
                    f'{divisors}')


def _valid_sizes(img_size: int, groups1: Sequence[int], groups2: Sequence[int]) -> str:
    """The nearest image sizes below and above `img_size` whose token counts the groups divide."""
    def fits(size: int) -> bool:
        grids = stage_grids(size, len(groups1))
        return all(g * g % a == 0 and g * g % b == 0
                   for g, a, b in zip(grids, groups1, groups2, strict=True))

    step = STEM_STRIDE
    below = next((n for n in range(img_size // step * step, 0, -step) if fits(n)), None)
    above = next(n for n in range(img_size // step * step + step, 100 * img_size + step, step)
                 if fits(n))
    return f'{below} or {above}' if below and below != img_size else f'{above}'


# ----------------------------------------------------------------------------- variants

# (base_dims, heads, mlp_ratio, np_mlp_ratio) of the authors' sizes; all use depth (4, 10, 6)
# and recursive_num (2, 5, 3). The authors' SReT_T_wo_slice and SReT_LT_wo_slice omit the
# required np_mlp_ratio (their constructors fail); 1 gives the published 4.8M and 5.0M.
_SIZES = {
    'T': ((32, 32, 32), (2, 4, 8), 3.6, 1.0),
    'LT': ((32, 32, 32), (2, 4, 8), 4.0, 1.0),
    'S': ((42, 42, 42), (3, 6, 12), 3.0, 2.0),
}
SLICED = dict(groups1=(8, 4, 1), groups2=(2, 1, 1))
NOT_SLICED = dict(groups1=(1, 1, 1), groups2=(1, 1, 1))


def _register_variants() -> None:
    for size, (base_dims, heads, mlp_ratio, np_mlp_ratio) in _SIZES.items():
        arch = dict(base_dims=base_dims, heads=heads, mlp_ratio=mlp_ratio,
                    np_mlp_ratio=np_mlp_ratio)
        for suffix in ('', '_distill'):  # distilled models: same network, other weights
            # Drop-path defaults as the authors' constructors: 0.1 (SReT), 0.0 (without slice).
            register(f'SReT_{size}{suffix}', SReT, drop_path_rate=0.1,
                     **arch, **SLICED)
            register(f'SReT_{size}_wo_slice{suffix}', SReT, **arch, **NOT_SLICED)
    # Fine-tuned at higher resolution: the authors' code registers the first (a distilled
    # model despite its name); their README lists the other two checkpoints.
    for name, size, img_size in (('SReT_S_wo_slice_finetune_384', 'S', 384),
                                 ('SReT_T_wo_slice_distill_finetune_384', 'T', 384),
                                 ('SReT_S_wo_slice_distill_finetune_512', 'S', 512)):
        base_dims, heads, mlp_ratio, np_mlp_ratio = _SIZES[size]
        register(name, SReT, pretrained_cfg={'crop_pct': 1.0}, img_size=img_size,
                 base_dims=base_dims, heads=heads, mlp_ratio=mlp_ratio,
                 np_mlp_ratio=np_mlp_ratio, **NOT_SLICED)


_register_variants()


# ----------------------------------------------------------------------------- weights


def _shared(sd: convert.Flat, prefix: str, indices: Sequence[int]) -> str:
    """The first of `indices` under `prefix` (e.g. 'transformers.0.blocks.'), after checking
    that every copy of that shared block holds the same values."""
    first = f'{prefix}{indices[0]}.'
    for i in indices[1:]:
        for key in [k for k in sd if k.startswith(first)]:
            other = f'{prefix}{i}.{key[len(first):]}'
            if other not in sd or not np.array_equal(sd[key], sd[other]):
                raise ModelError(f'{other} differs from {key}: the two copies of a shared SReT '
                                 f'block must be equal')
    return first


def _coefficients(out: convert.Flat, sd: convert.Flat, src: str, dst: str,
                  names: Sequence[str]) -> None:
    for i, name in enumerate(names, start=1):
        out[f'params/{dst}/{name}/scale'] = sd[f'{src}coefficient{i}.bias']


def _mlp(out: convert.Flat, sd: convert.Flat, src: str, dst: str) -> None:
    for i in (1, 2):
        out[f'params/{dst}/Dense_{i - 1}/kernel'] = convert.linear(sd[f'{src}fc{i}.weight'])
        out[f'params/{dst}/Dense_{i - 1}/bias'] = sd[f'{src}fc{i}.bias']


def _norm(out: convert.Flat, sd: convert.Flat, src: str, dst: str) -> None:
    out[f'params/{dst}/scale'], out[f'params/{dst}/bias'] = sd[f'{src}.weight'], sd[f'{src}.bias']


def _from_authors(sd: convert.Flat, model: SReT) -> convert.Flat | None:
    """The authors' `SReT` / `RecursiveTransformer` state dict -> this model's arrays.

    Their `transformers.{s}.blocks` list holds each shared block once per application (e.g.
    `blocks.0` and `blocks.2`, identical values) with the NLLs at the odd indices.
    """
    if 'patch_embed.conv1.weight' not in sd or 'transformers.0.blocks.0.attn.qkv.weight' not in sd:
        return None
    out: convert.Flat = {}
    for i in (1, 2, 3):
        out[f'params/stem/conv{i}/kernel'] = convert.conv(sd[f'patch_embed.conv{i}.weight'])
        out[f'params/stem/conv{i}/bias'] = sd[f'patch_embed.conv{i}.bias']
        bn = f'patch_embed.bn{i}'
        _norm(out, sd, bn, f'stem/bn{i}')
        out[f'batch_stats/stem/bn{i}/mean'] = sd[f'{bn}.running_mean']
        out[f'batch_stats/stem/bn{i}/var'] = sd[f'{bn}.running_var']
    pe = sd['pos_embed']  # [1, dim, h, w]
    out['params/pos_embed/pos_embedding'] = pe.transpose(0, 2, 3, 1).reshape(1, -1, pe.shape[1])
    for s, (depth, rec) in enumerate(zip(model.depth, model.recursive_num, strict=True)):
        loops, prefix = depth // rec, f'transformers.{s}.blocks.'
        for r in range(rec):
            src = _shared(sd, prefix, [2 * (r * loops + k) for k in range(loops)])
            dst = f'stage_{s}/block_{r}'
            out.update({f'params/{k}': v for k, v in convert.attention(
                f'{dst}/attn', sd[f'{src}attn.qkv.weight'], sd.get(f'{src}attn.qkv.bias'),
                sd[f'{src}attn.proj.weight'], sd[f'{src}attn.proj.bias'],
                model.heads[s]).items()})
            _norm(out, sd, f'{src}norm1', f'{dst}/norm1')
            _norm(out, sd, f'{src}norm2', f'{dst}/norm2')
            _mlp(out, sd, f'{src}mlp.', f'{dst}/mlp')
            _coefficients(out, sd, src, dst, ('residual_attn', 'branch_attn', 'residual_mlp',
                                              'branch_mlp'))
        for j in range(depth):
            src, dst = f'{prefix}{2 * j + 1}.', f'stage_{s}/nll_{j}'
            _norm(out, sd, f'{src}norm1', f'{dst}/norm')
            _mlp(out, sd, f'{src}mlp.', f'{dst}/mlp')
            _coefficients(out, sd, src, dst, ('residual', 'branch'))
        if s:
            out[f'params/pool_{s - 1}/kernel'] = convert.conv(sd[f'pools.{s - 1}.conv.weight'])
            out[f'params/pool_{s - 1}/bias'] = sd[f'pools.{s - 1}.conv.bias']
    _norm(out, sd, 'norm', 'norm')
    if 'head.weight' in sd:
        out['params/head/kernel'] = convert.linear(sd['head.weight'])
        out['params/head/bias'] = sd['head.bias']
    return out


def _resize(key: str, value: np.ndarray, shape: tuple[int, ...],
            model: SReT) -> np.ndarray | None:
    """Bilinear resize of the 2-D position embedding `[1, h * w, dim]` to another grid (e.g. a
    224 px checkpoint for 384 px fine-tuning)."""
    if not key.endswith('pos_embed/pos_embedding') or value.shape[-1] != shape[-1]:
        return None
    side = int(round(shape[1] ** 0.5))
    return layers.resample_pos_embed(value, (side, side), 0, 'bilinear')

