"""ConvNeXt (Liu et al., 2022): a ResNet modernised step by step towards the Swin design.

Parameter names follow timm's module tree: `stem` (a 4x4 patch embedding) + `stem_norm`,
`stages_{i}/{downsample_norm, downsample}` (stages 1..3), `stages_{i}/blocks_{j}/{conv_dw,
norm, mlp, gamma}`, then `head_norm` and `head`.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax

from vit_jax.errors import ModelError
from vit_jax.models import contract, convert, layers
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS

LN_EPS = 1e-6  # timm's and the original ConvNeXt LayerNorm (not torch's 1e-5 default)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, LayerNorm, inverted-bottleneck MLP, layer scale, residual.

    `[batch, h, w, dim] -> [batch, h, w, dim]`.
    """

    kernel_size: int = 7
    mlp_ratio: float = 4.0
    ls_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        dim = x.shape[-1]
        k = self.kernel_size
        y = nn.Conv(dim, (k, k), padding=k // 2, feature_group_count=dim, dtype=self.dtype,
                    kernel_init=layers.trunc_normal, name='conv_dw')(x)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='norm')(y)
        y = layers.MlpBlock(int(self.mlp_ratio * dim), act_layer='gelu', dtype=self.dtype,
                            kernel_init=layers.trunc_normal, bias_init=nn.initializers.zeros,
                            name='mlp')(y, deterministic=deterministic)
        gamma = self.param('gamma', nn.initializers.constant(self.ls_init_value), (dim,))
        y = y * gamma.astype(y.dtype)
        return x + layers.DropPath(self.drop_path_rate)(y, deterministic=deterministic)


class ConvNeXtStage(nn.Module):
    """Downsampling (LayerNorm + 2x2 stride-2 conv; not in the first stage), then `depth`
    blocks. `[batch, h, w, c] -> [batch, h', w', dim]`."""

    dim: int
    depth: int
    downsample: bool
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    ls_init_value: float = 1e-6
    drop_path_rates: tuple[float, ...] = ()
    dtype: str = 'float32'

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.downsample:
            x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='downsample_norm')(x)
            x = nn.Conv(self.dim, (2, 2), strides=2, padding='VALID', dtype=self.dtype,
                        kernel_init=layers.trunc_normal, name='downsample')(x)
        for j in range(self.depth):
            x = layers.remat_block(ConvNeXtBlock)(
                self.kernel_size, self.mlp_ratio, self.ls_init_value, self.drop_path_rates[j],
                self.dtype, name=f'blocks_{j}')(x, deterministic)
        return x


class ConvNeXt(nn.Module, contract.Family):
    """ConvNeXt: images `[batch, img_size, img_size, in_chans]` -> logits `[batch, num_classes]`.

    Options use timm's names. `img_size` must be a multiple of `patch_size * 8` (the stem and
    three 2x downsamplings). `num_classes=0` returns the pooled, normalised features
    `[batch, dims[-1]]`.
    """

    num_classes: int = 1000
    img_size: int = 224
    in_chans: int = 3
    patch_size: int = 4
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    ls_init_value: float = 1e-6
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: str = 'float32'

    stem_layers = r'(stem|stem_norm)/'
    block_layers = ((r'stages_(\d+)/downsample', (0,)), (r'stages_(\d+)/blocks_(\d+)/', ()))
    feature_modules = r'stages_\d+'
    default_preprocessing = contract.Preprocessing(
        crop_pct=0.875, interpolation='bicubic', **NORMALIZATIONS['imagenet'])
    model_splits = (*contract.mlp_splits('mlp'),
                    *contract.replicated(r'(stem|downsample|head)(_norm)?', 'conv_dw', 'norm'),
                    contract.Split('/gamma$'))
    short_names = contract.ShortNames('ConvNeXt', ('convnext_*',),
                                      lambda n: n.removeprefix('convnext_'))

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(
            convert=_from_timm, hf_model_types=('convnext',), hf_options=_hf_options,
            to_hf=_to_hf,
            layouts='timm ConvNeXt state dicts, the original facebookresearch/ConvNeXt '
                    'checkpoints and Hugging Face ConvNextForImageClassification state dicts')

    def __post_init__(self) -> None:
        contract.check_choices((('dtype', self.dtype, contract.DTYPES),))
        if len(self.depths) != len(self.dims):
            raise ModelError(f'depths={tuple(self.depths)} and dims={tuple(self.dims)} must have '
                             f'one entry per stage')
        self.check_size(self.img_size)
        super().__post_init__()

    @property
    def reduction(self) -> int:
        """Total downsampling factor: the stem's patch size times 2 per later stage."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def check_size(self, size: int) -> None:
        """Raises a ModelError if images of `size` px do not fit the stem and downsamplings."""
        r = self.reduction
        if size < r or size % r:
            below = size // r * r
            hint = f'{below} or {below + r}' if below else str(r)
            raise ModelError(
                f'img_size={size} does not fit patch_size={self.patch_size} and '
                f'{len(self.depths) - 1} 2x downsamplings (a multiple of {r} is needed); use '
                f'img_size={hint}')

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        for size in images.shape[1:3]:
            self.check_size(size)
        x = layers.PatchEmbed(self.dims[0], self.patch_size, in_chans=self.in_chans,
                              dtype=self.dtype, kernel_init=layers.trunc_normal,
                              name='stem')(images)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='stem_norm')(x)
        rates = layers.drop_path_rates(self.drop_path_rate, sum(self.depths))
        for i, (dim, depth) in enumerate(zip(self.dims, self.depths, strict=True)):
            first = sum(self.depths[:i])
            x = ConvNeXtStage(dim, depth, downsample=i > 0, kernel_size=self.kernel_size,
                              mlp_ratio=self.mlp_ratio, ls_init_value=self.ls_init_value,
                              drop_path_rates=tuple(rates[first:first + depth]),
                              dtype=self.dtype, name=f'stages_{i}')(x, deterministic=not train)
            x = nn.with_logical_constraint(x, ('batch', 'height', 'width', 'embed'))
        x = x.mean(axis=(1, 2))
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name='head_norm')(x)
        x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype,
                                      kernel_init=layers.trunc_normal)


# ----------------------------------------------------------------------------- variants

# name: (depths, dims, timm's default pretrained tag, its crop_pct)
_VARIANTS = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768), 'in12k_ft_in1k', 0.95),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768), 'in12k_ft_in1k', 0.95),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024), 'fb_in22k_ft_in1k', 0.875),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536), 'fb_in22k_ft_in1k', 0.875),
    'convnext_xlarge': ((3, 3, 27, 3), (256, 512, 1024, 2048), 'fb_in22k_ft_in1k', 0.875),
}


def _register_variants() -> None:
    for name, (depths, dims, tag, crop_pct) in _VARIANTS.items():
        cfg = {'crop_pct': crop_pct, 'tag': tag}
        register(name, ConvNeXt, pretrained_cfg=cfg, depths=depths, dims=dims)


_register_variants()


# ----------------------------------------------------------------------------- weights


def _timm_key(key: str) -> str:
    """Original Facebook layout -> timm's (as timm's `checkpoint_filter_fn`)."""
    key = key.replace('downsample_layers.0.', 'stem.')
    key = re.sub(r'^stages\.(\d+)\.(\d+)', r'stages.\1.blocks.\2', key)
    key = re.sub(r'^downsample_layers\.(\d+)\.(\d+)', r'stages.\1.downsample.\2', key)
    key = key.replace('dwconv', 'conv_dw').replace('pwconv', 'mlp.fc')
    key = re.sub(r'^head\.', 'head.fc.', key)
    return re.sub(r'^norm\.', 'head.norm.', key)


_MODULES = (  # timm module name -> own (regular expressions, applied in order)
    (r'^stem\.0$', 'stem'), (r'^stem\.1$', 'stem_norm'),
    (r'\.downsample\.0$', '.downsample_norm'), (r'\.downsample\.1$', '.downsample'),
    (r'\.mlp\.fc1$', '.mlp.Dense_0'), (r'\.mlp\.fc2$', '.mlp.Dense_1'),
    (r'^head\.norm$', 'head_norm'), (r'^head\.fc$', 'head'), (r'\.(\d+)', r'_\1'),
)
_NORMS = ('stem_norm', 'downsample_norm', 'norm', 'head_norm')


# Hugging Face ConvNeXt names (the same in hub files and in transformers 5) -> timm's.
_HF_TO_TIMM = (
    (r'^embeddings\.patch_embeddings\.', 'stem.0.'),
    (r'^embeddings\.layernorm\.', 'stem.1.'), (r'^encoder\.stages\.', 'stages.'),
    (r'\.downsampling_layer\.', '.downsample.'), (r'\.layers\.(\d+)\.', r'.blocks.\1.'),
    (r'\.dwconv\.', '.conv_dw.'), (r'\.pwconv(\d)\.', r'.mlp.fc\1.'),
    (r'\.layernorm\.', '.norm.'), (r'\.layer_scale_parameter$', '.gamma'),
    (r'^layernorm\.', 'head.norm.'), (r'^classifier\.', 'head.fc.'),
)


def _from_timm(arrays: convert.Flat, model: ConvNeXt) -> convert.Flat | None:
    """A timm, original Facebook or Hugging Face `ConvNextForImageClassification` /
    `ConvNextModel` state dict -> this model's flat parameters."""
    if 'downsample_layers.0.0.weight' in arrays:
        arrays = {_timm_key(k): v for k, v in arrays.items()}
    if any(k.endswith('embeddings.patch_embeddings.weight') for k in arrays):
        arrays = convert.rename(arrays, ((r'^convnext\.', ''), *_HF_TO_TIMM))
    if 'stem.0.weight' not in arrays:
        return None
    out = {}
    for key, value in arrays.items():
        module, _, leaf = key.rpartition('.')
        for pattern, new in _MODULES:
            module = re.sub(pattern, new, module)
        name = 'params/' + module.replace('.', '/')
        if module.rpartition('.')[2] in _NORMS:
            name += '/scale' if leaf == 'weight' else '/bias'
        elif leaf == 'weight':
            name += '/kernel'
            value = convert.conv(value) if value.ndim == 4 else convert.linear(value)
        else:
            name += f'/{leaf}'
        out[name] = value
    return out


# This model's names, as `convert.to_torch` writes them -> timm's, which `_HF_TO_TIMM` reads.
_OWN_TO_TIMM = (
    (r'^stem\.', 'stem.0.'), (r'^stem_norm\.', 'stem.1.'), (r'\.downsample\.', '.downsample.1.'),
    (r'\.downsample_norm\.', '.downsample.0.'), (r'\.mlp\.Dense_0\.', '.mlp.fc1.'),
    (r'\.mlp\.Dense_1\.', '.mlp.fc2.'), (r'^head\.', 'head.fc.'), (r'^head_norm\.', 'head.norm.'),
    (r'_(\d+)\.', r'.\1.'),
)


def _to_hf(model: ConvNeXt, flat: convert.Flat) -> tuple[dict, convert.Flat]:
    """`config.json` and hub-named arrays of a `ConvNextForImageClassification` (a
    `ConvNextModel` without a head)."""
    if model.kernel_size != 7 or model.mlp_ratio != 4:
        raise ModelError(f"Hugging Face's ConvNeXt has 7x7 depthwise convolutions and an MLP 4 "
                         f'times as wide; this model has kernel_size={model.kernel_size}, '
                         f'mlp_ratio={model.mlp_ratio}')
    params = {k.removeprefix('params/'): v for k, v in flat.items() if k.startswith('params/')}
    arrays = convert.rename(convert.to_torch(params), _OWN_TO_TIMM)
    classify = bool(model.num_classes)
    config = dict(
        architectures=['ConvNextForImageClassification' if classify else 'ConvNextModel'],
        model_type='convnext', image_size=model.img_size, patch_size=model.patch_size,
        num_channels=model.in_chans, num_stages=len(model.depths), depths=list(model.depths),
        hidden_sizes=list(model.dims), hidden_act='gelu', layer_norm_eps=LN_EPS,
        # > 0 gives Hugging Face's model the layer scale parameter that ours always has
        layer_scale_init_value=model.ls_init_value or 1e-6, drop_path_rate=0.0)
    return config, convert.hf_names(arrays, _HF_TO_TIMM, 'convnext.' if classify else '')


def _hf_options(config: dict, names: frozenset[str]) -> dict:
    """`ConvNeXt` options of a Hugging Face ConvNeXt `config.json`."""
    classify = 'classifier.weight' in names
    return dict(img_size=config.get('image_size', 224), patch_size=config.get('patch_size', 4),
                in_chans=config.get('num_channels', 3), depths=tuple(config['depths']),
                dims=tuple(config['hidden_sizes']),
                num_classes=len(config.get('id2label') or {}) if classify else 0)

