"""Swin Transformer (Liu et al., 2021): shifted-window attention in a four-stage hierarchy.

Parameter names follow timm's module tree, so the mapping from its state dicts is one to one:
`patch_embed` + `patch_norm`, `layers_{i}/downsample/{norm, reduction}` at the start of stages
1..3 (as timm; the original Microsoft code keeps it at the end of the stage before),
`layers_{i}/blocks_{j}/{norm1, attn, norm2, mlp}` with `attn/relative_position_bias_table` and
`attn/attention` (`layers.MultiHeadAttention`), then `norm` and `head`.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.errors import ModelError
from vit_jax.models import contract, convert, layers
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, used by timm and the original Swin


def relative_position_index(window: int) -> np.ndarray:
    """Index `[window**2, window**2]` into the `(2 * window - 1)**2` relative offsets."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing='ij'))
    coords = coords.reshape(2, -1)  # [2, tokens]
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """`[batch, h, w, c] -> [batch * windows, window**2, c]` (windows in row-major order)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(x: jax.Array, window: int, h: int, w: int) -> jax.Array:
    """Inverse of `window_partition`: `[batch * windows, window**2, c] -> [batch, h, w, c]`."""
    c = x.shape[-1]
    x = x.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(size: int, window: int, shift: int) -> np.ndarray:
    """Which tokens may attend to which in the cyclically shifted layout: `[windows, N, N]` bool.

    After rolling by `-shift`, windows on the bottom/right edge hold pieces from opposite sides
    of the feature map; a token attends only to tokens of its own region.
    """
    regions = np.zeros((1, size, size, 1), np.int32)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    for i, (h0, h1) in enumerate(bounds):
        for j, (w0, w1) in enumerate(bounds):
            regions[:, h0:h1, w0:w1] = 3 * i + j
    ids = np.asarray(window_partition(regions, window))[..., 0]  # [windows, N]
    return ids[:, :, None] == ids[:, None, :]


class WindowAttention(layers.AttentionOptions):
    """(Shifted-)window self-attention with a learned relative position bias.

    `[batch, h, w, dim] -> [batch, h, w, dim]`; `h` and `w` are multiples of `window`.
    The bias table `relative_position_bias_table` is `[(2 * window - 1)**2, heads]`.
    """

    num_heads: int
    window: int
    shift: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        b, h, w, dim = x.shape
        if self.shift:
            x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
        windows = window_partition(x, self.window)  # [batch * nw, N, dim]
        table = self.param('relative_position_bias_table', layers.trunc_normal,
                           ((2 * self.window - 1) ** 2, self.num_heads))
        n = self.window ** 2
        bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, -1)
        bias = bias.transpose(2, 0, 1)[None]  # [1, heads, N, N]
        mask = None
        if self.shift:
            allowed = shifted_window_mask(h, self.window, self.shift)  # [nw, N, N]
            mask = jnp.asarray(np.tile(allowed, (b, 1, 1))[:, None])  # [batch * nw, 1, N, N]
        y = layers.MultiHeadAttention(
            self.num_heads, dropout_rate=self.attn_drop_rate, impl=self.attn_impl,
            dtype=self.dtype, kernel_init=layers.trunc_normal, name='attention')(
                windows, bias=bias, mask=mask, deterministic=deterministic)
        y = nn.Dropout(self.drop_rate)(y, deterministic=deterministic)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        return y


class SwinBlock(layers.AttentionOptions):
    """Pre-norm block: window attention, then MLP. `[batch, h, w, dim] -> [batch, h, w, dim]`."""

    num_heads: int
    window: int
    shift: int = 0
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        dim = x.shape[-1]
        drop_path = layers.DropPath(self.drop_path_rate)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='norm1')(x)
        y = WindowAttention(self.num_heads, self.window, self.shift, **self.attention_options(),
                            name='attn')(y, deterministic=deterministic)
        x = x + drop_path(y, deterministic=deterministic)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='norm2')(x)
        y = layers.MlpBlock(int(dim * self.mlp_ratio), dropout_rate=self.drop_rate,
                            act_layer='gelu', dtype=self.dtype, kernel_init=layers.trunc_normal,
                            bias_init=nn.initializers.zeros, name='mlp')(
                                y, deterministic=deterministic)
        return x + drop_path(y, deterministic=deterministic)


class PatchMerging(nn.Module):
    """Concatenates each 2x2 neighbourhood, normalises and projects to `out_dim`.

    `[batch, h, w, dim] -> [batch, h / 2, w / 2, out_dim]`.
    """

    out_dim: int
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        # Feature order (row offset fastest within column offset) as the original's x0..x3.
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, h // 2, w // 2, 4 * c)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='norm')(x)
        return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                        kernel_init=layers.trunc_normal, name='reduction')(x)


class SwinStage(layers.AttentionOptions):
    """Patch merging (all stages but the first, as timm), then `depth` blocks with the shift on
    every second one. `[batch, h, w, c] -> [batch, h', w', dim]`."""

    dim: int
    depth: int
    num_heads: int
    window: int
    shift: int
    downsample: bool
    mlp_ratio: float = 4.0
    drop_path_rates: tuple[float, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.downsample:
            x = PatchMerging(self.dim, dtype=self.dtype, name='downsample')(x)
        for j in range(self.depth):
            x = layers.remat_block(SwinBlock)(
                self.num_heads, self.window, self.shift if j % 2 else 0, self.mlp_ratio,
                self.drop_path_rates[j], **self.attention_options(), name=f'blocks_{j}')(
                    x, deterministic)
        return x


def stage_windows(img_size: int, patch_size: int, window_size: int,
                  num_stages: int) -> list[tuple[int, int, int]] | None:
    """`(resolution, window, shift)` per stage, or None if `img_size` does not fit.

    A stage whose feature map is no larger than the window takes one window of the whole map
    and no shift (as timm and the original).
    """
    if img_size % patch_size:
        return None
    size, out = img_size // patch_size, []
    for i in range(num_stages):
        if i:
            if size % 2:
                return None
            size //= 2
        window = min(window_size, size)
        if size < 1 or size % window:
            return None
        out.append((size, window, window // 2 if size > window_size else 0))
    return out


def valid_img_sizes(img_size: int, patch_size: int, window_size: int, num_stages: int) -> str:
    """The image sizes nearest to `img_size` that every stage's windows divide, as text."""
    fits = lambda s: stage_windows(s, patch_size, window_size, num_stages) is not None  # noqa: E731
    step = patch_size
    below = next((s for s in range(img_size - img_size % step, 0, -step) if fits(s)), None)
    above = next(s for s in range(img_size + step - img_size % step, 100 * img_size, step)
                 if fits(s))
    return f'{below} or {above}' if below else str(above)


class SwinTransformer(layers.AttentionOptions, contract.Family):
    """Swin: images `[batch, img_size, img_size, in_chans]` -> logits `[batch, num_classes]`.

    Options use timm's names. `embed_dim` doubles at each stage; shifted windows on every
    second block. `drop_rate` drops the pooled features before the head, `proj_drop_rate` the
    blocks' attention outputs and MLP activations. `num_classes=0` returns the pooled features
    `[batch, embed_dim * 2**3]`.
    """

    num_classes: int = 1000
    img_size: int = 224
    in_chans: int = 3
    patch_size: int = 4
    window_size: int = 7
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    mlp_ratio: float = 4.0
    proj_drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    stem_layers = r'(patch_embed|patch_norm)/'
    block_layers = ((r'layers_(\d+)/downsample/', (0,)), (r'layers_(\d+)/blocks_(\d+)/', ()))
    feature_modules = r'layers_\d+'
    feature_norm = 'norm'
    default_preprocessing = contract.Preprocessing(
        crop_pct=0.9, interpolation='bicubic', **NORMALIZATIONS['imagenet'])
    no_weight_decay = ('relative_position_bias_table',)
    model_splits = (*contract.attention_splits('attention'), *contract.mlp_splits('mlp'),
                    *contract.replicated('patch_embed', 'patch_norm', r'norm\d?', 'downsample',
                                         'head'),
                    contract.Split('/relative_position_bias_table$'))
    # swin_tiny_patch4_window7_224 -> tiny, swin_base_patch4_window12_384 -> base384.
    short_names = contract.ShortNames(
        'Swin', ('swin_*',), lambda n: n.split('_')[1] + n.split('_')[-1].replace('224', ''))

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(
            convert=_convert, resize=_resize, hf_model_types=('swin',), hf_options=_hf_options,
            to_hf=_to_hf,
            layouts='timm SwinTransformer state dicts, the original microsoft/Swin-Transformer '
                    'checkpoints and Hugging Face SwinForImageClassification state dicts')

    def __post_init__(self) -> None:
        contract.check_choices((('attn_impl', self.attn_impl, layers.ATTENTION_IMPLS),
                                ('dtype', self.dtype, contract.DTYPES)))
        if len(self.depths) != len(self.num_heads):
            raise ModelError(f'depths={tuple(self.depths)} and num_heads={tuple(self.num_heads)} '
                             f'must have one entry per stage')
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2 ** i) % heads:
                raise ModelError(f'stage {i} width {self.embed_dim * 2 ** i} is not divisible by '
                                 f'num_heads[{i}]={heads}')
        self.check_size(self.img_size)
        super().__post_init__()

    def check_size(self, size: int) -> list[tuple[int, int, int]]:
        """`(resolution, window, shift)` per stage for images of `size` px, or a ModelError."""
        n = len(self.depths)
        stages = stage_windows(size, self.patch_size, self.window_size, n)
        if stages is None:
            raise ModelError(
                f'img_size={size} does not fit patch_size={self.patch_size}, '
                f'window_size={self.window_size} and {n - 1} patch mergings (each stage\'s '
                f'feature map must be even and a multiple of its window); use '
                f'img_size={valid_img_sizes(size, self.patch_size, self.window_size, n)}')
        return stages

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if images.shape[1] != images.shape[2]:
            raise ModelError(f'expected square images, got {images.shape[1]}x{images.shape[2]}')
        stages = self.check_size(images.shape[1])
        x = layers.PatchEmbed(self.embed_dim, self.patch_size, in_chans=self.in_chans,
                              dtype=self.dtype, kernel_init=layers.trunc_normal,
                              name='patch_embed')(images)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='patch_norm')(x)
        rates = layers.drop_path_rates(self.drop_path_rate, sum(self.depths))
        for i, ((_, window, shift), depth, heads) in enumerate(
                zip(stages, self.depths, self.num_heads, strict=True)):
            first = sum(self.depths[:i])
            x = SwinStage(self.embed_dim * 2 ** i, depth, heads, window, shift,
                          downsample=i > 0, mlp_ratio=self.mlp_ratio,
                          drop_path_rates=tuple(rates[first:first + depth]),
                          **self.attention_options() | {'drop_rate': self.proj_drop_rate},
                          name=f'layers_{i}')(x, deterministic=not train)
            x = nn.with_logical_constraint(x, ('batch', 'height', 'width', 'embed'))
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='norm')(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype,
                                      kernel_init=layers.trunc_normal)


# ----------------------------------------------------------------------------- variants

# name: (embed_dim, depths, num_heads, window, img_size, timm's default pretrained tag)
_VARIANTS = {
    'swin_tiny_patch4_window7_224': (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224, 'ms_in1k'),
    'swin_small_patch4_window7_224': (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224,
                                      'ms_in22k_ft_in1k'),
    'swin_base_patch4_window7_224': (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224,
                                     'ms_in22k_ft_in1k'),
    'swin_base_patch4_window12_384': (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384,
                                      'ms_in22k_ft_in1k'),
    'swin_large_patch4_window7_224': (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224,
                                      'ms_in22k_ft_in1k'),
    'swin_large_patch4_window12_384': (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384,
                                       'ms_in22k_ft_in1k'),
}


def _register_variants() -> None:
    for name, (dim, depths, heads, window, size, tag) in _VARIANTS.items():
        cfg = {'tag': tag, **({'crop_pct': 1.0} if size == 384 else {})}
        register(name, SwinTransformer, pretrained_cfg=cfg, patch_size=4, window_size=window,
                 embed_dim=dim, depths=depths, num_heads=heads, img_size=size)


_register_variants()


# ----------------------------------------------------------------------------- weights


def _timm_key(key: str) -> str:
    """Original Microsoft layout -> timm's: patch merging moves from the end of stage i to the
    start of stage i + 1, and `head` becomes `head.fc`."""
    key = re.sub(r'^layers\.(\d+)\.downsample',
                 lambda m: f'layers.{int(m[1]) + 1}.downsample', key)
    return re.sub(r'^head\.', 'head.fc.', key)


_RENAMES = (('patch_embed/proj', 'patch_embed'), ('patch_embed/norm', 'patch_norm'),
            ('mlp/fc1', 'mlp/Dense_0'), ('mlp/fc2', 'mlp/Dense_1'), ('head/fc', 'head'))


def _from_timm(arrays: convert.Flat, model: SwinTransformer) -> convert.Flat | None:
    """A timm or original Microsoft Swin state dict -> this model's flat parameters."""
    if 'patch_embed.proj.weight' not in arrays:
        return None
    if 'layers.0.downsample.reduction.weight' in arrays:  # timm has no merging in stage 0
        arrays = {_timm_key(k): v for k, v in arrays.items()}
    out = {}
    for key, value in arrays.items():
        module, _, leaf = key.rpartition('.')
        name = 'params/' + re.sub(r'\.(\d+)', r'_\1', module).replace('.', '/')
        for old, new in _RENAMES:
            name = name.replace(old, new)
        if leaf in ('relative_position_index', 'attn_mask'):
            continue  # buffers, recomputed here
        if module.endswith('attn.qkv') and leaf == 'weight':
            attn = key[:-len('qkv.weight')]
            stage = int(re.match(r'layers\.(\d+)', key)[1])
            out.update(convert.attention(
                name.removesuffix('/qkv') + '/attention', value, arrays.get(attn + 'qkv.bias'),
                arrays[attn + 'proj.weight'], arrays[attn + 'proj.bias'], model.num_heads[stage]))
        elif module.endswith(('attn.qkv', 'attn.proj')):
            continue  # taken with the qkv weight above
        elif re.search(r'norm\d?$', module):
            out[f'{name}/{"scale" if leaf == "weight" else "bias"}'] = value
        elif leaf == 'weight':
            torch_layout = convert.conv if value.ndim == 4 else convert.linear
            out[f'{name}/kernel'] = torch_layout(value)
        else:
            out[f'{name}/{leaf}'] = value
    return out


# Hugging Face Swin names (hub files and transformers 5's in-memory ones) -> the original
# Microsoft layout (patch merging at the end of a stage), which `_from_timm` reads.
_HF_TO_MICROSOFT = (
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^embeddings\.norm\.', 'patch_embed.norm.'), (r'^encoder\.layers\.', 'layers.'),
    (r'\.attention\.(self\.query|q_proj)\.', '.attn.q.'),
    (r'\.attention\.(self\.key|k_proj)\.', '.attn.k.'),
    (r'\.attention\.(self\.value|v_proj)\.', '.attn.v.'),
    (r'\.attention\.(output\.dense|o_proj)\.', '.attn.proj.'),
    (r'\.attention\.(self|relative_position_bias)\.relative_position_bias_table$',
     '.attn.relative_position_bias_table'),
    (r'\.(intermediate\.dense|mlp\.fc1)\.', '.mlp.fc1.'),
    (r'\.(output\.dense|mlp\.fc2)\.', '.mlp.fc2.'),
    (r'\.layernorm_before\.', '.norm1.'), (r'\.layernorm_after\.', '.norm2.'),
    (r'^layernorm\.', 'norm.'), (r'^classifier\.', 'head.'),
)


def _convert(arrays: convert.Flat, model: SwinTransformer) -> convert.Flat | None:
    """timm, original Microsoft or Hugging Face `SwinForImageClassification` / `SwinModel`."""
    if any(k.endswith('embeddings.patch_embeddings.projection.weight') for k in arrays):
        arrays = convert.fuse_qkv(convert.rename(arrays, ((r'^swin\.', ''), *_HF_TO_MICROSOFT)))
    return _from_timm(arrays, model)


def _hf_options(config: dict, names: frozenset[str]) -> dict:
    """`SwinTransformer` options of a Hugging Face Swin `config.json`."""
    if config.get('use_absolute_embeddings') or not config.get('qkv_bias', True):
        raise ModelError('a Hugging Face Swin with absolute position embeddings or without qkv '
                         'biases has no vit_jax equivalent')
    classify = 'classifier.weight' in names
    return dict(img_size=config['image_size'], patch_size=config['patch_size'],
                in_chans=config.get('num_channels', 3), embed_dim=config['embed_dim'],
                depths=tuple(config['depths']), num_heads=tuple(config['num_heads']),
                window_size=config['window_size'], mlp_ratio=config.get('mlp_ratio', 4.0),
                num_classes=len(config.get('id2label') or {}) if classify else 0)


# This model's names, as `convert.to_torch` writes them -> the original Microsoft layout with
# separate query, key and value projections (Hugging Face's), which `_HF_TO_MICROSOFT` reads.
_OWN_TO_MICROSOFT = (
    (r'^patch_embed\.', 'patch_embed.proj.'), (r'^patch_norm\.', 'patch_embed.norm.'),
    (r'\.mlp\.Dense_0\.', '.mlp.fc1.'), (r'\.mlp\.Dense_1\.', '.mlp.fc2.'),
    (r'\.attn\.attention\.', '.attn.'), (r'_(\d+)\.', r'.\1.'),
)


def _to_hf(model: SwinTransformer, flat: convert.Flat) -> tuple[dict, convert.Flat]:
    """`config.json` and hub-named arrays of a `SwinForImageClassification` (a `SwinModel`
    without a head)."""
    params = {k.removeprefix('params/'): v for k, v in flat.items() if k.startswith('params/')}
    arrays = convert.rename(convert.to_torch(params), _OWN_TO_MICROSOFT)
    arrays = {re.sub(r'^layers\.(\d+)\.downsample', lambda m: f'layers.{int(m[1]) - 1}.downsample',
                     k): v for k, v in arrays.items()}  # merging ends the stage before
    classify = bool(model.num_classes)
    config = dict(
        architectures=['SwinForImageClassification' if classify else 'SwinModel'],
        model_type='swin', image_size=model.img_size, patch_size=model.patch_size,
        num_channels=model.in_chans, embed_dim=model.embed_dim, depths=list(model.depths),
        num_heads=list(model.num_heads), window_size=model.window_size,
        mlp_ratio=model.mlp_ratio, qkv_bias=True, hidden_act='gelu', layer_norm_eps=LN_EPS,
        use_absolute_embeddings=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0)
    return config, convert.hf_names(arrays, _HF_TO_MICROSOFT, 'swin.' if classify else '')


def _resize(key: str, value: np.ndarray, shape: tuple[int, ...],
            model: SwinTransformer) -> np.ndarray | None:
    """A relative position bias table `[(2 * window - 1)**2, heads]` for another window (another
    `window_size`, or a stage whose feature map is smaller than the window at another
    `img_size`): resampled bicubically as timm's `resize_rel_pos_bias_table_simple`."""
    if not key.endswith('relative_position_bias_table') or value.shape[-1] != shape[-1]:
        return None
    old, new = (int(round(np.sqrt(n))) for n in (value.shape[0], shape[0]))
    if old * old != value.shape[0] or new * new != shape[0]:
        return None
    table = layers.resample_grid(value.reshape(old, old, -1), (new, new), 'bicubic')
    return table.reshape(shape)

