"""Vision Transformer (Dosovitskiy et al., 2021) with the original checkpoint parameter tree.

Parameter names are those of google-research/vision_transformer's published `.npz` files:
`embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `Transformer/encoder_norm`, `pre_logits`, `head` (and DeiT's distillation
token and head, `dist_token` and `head_dist`, in the distilled variants). They are given explicitly:
flax numbers auto-named modules per type, which would no longer match those files.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vit_jax.errors import ModelError
from vit_jax.models import contract, convert, layers, resnet
from vit_jax.models.registry import register
from vit_jax.normalization import NORMALIZATIONS

CLASSIFIERS = ('token', 'gap')
POS_EMBEDS = ('learned', 'sincos1d', 'sincos2d', 'none')


class EncoderBlock(layers.AttentionOptions):
    """Pre-norm transformer block: `[batch, tokens, dim] -> [batch, tokens, dim]`."""

    num_heads: int
    mlp_dim: int
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool,
                 drop_path_rate: jax.Array | None = None) -> jax.Array:
        """`drop_path_rate` (traced, when scanned over layers) overrides the field."""
        drop_path = functools.partial(layers.DropPath(self.drop_path_rate), rate=drop_path_rate)
        y = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name='LayerNorm_0')(x)
        y = layers.MultiHeadAttention(
            self.num_heads, dropout_rate=self.attn_drop_rate, impl=self.attn_impl,
            dtype=self.dtype, name='MultiHeadDotProductAttention_1')(y, deterministic=deterministic)
        y = nn.Dropout(self.drop_rate)(y, deterministic=deterministic)
        x = x + drop_path(y, deterministic=deterministic)
        y = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name='LayerNorm_2')(x)
        y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.drop_rate, act_layer=self.act_layer,
                            dtype=self.dtype, name='MlpBlock_3')(y, deterministic=deterministic)
        return nn.with_logical_constraint(x + drop_path(y, deterministic=deterministic),
                                          ('batch', 'tokens', 'embed'))


# The module whose parameters `scan_layers` stacks: `Transformer/encoderblock/...` `[depth, ...]`,
# as big_vision names it.
SCANNED_BLOCKS = 'encoderblock'


def _scanned_block(block: EncoderBlock, x: jax.Array, rate: jax.Array | None,
                   deterministic: bool) -> tuple[jax.Array, None]:
    """One layer of the scan: carry `x` `[batch, tokens, dim]`, scanned drop-path `rate`."""
    return block(x, deterministic, rate), None


class Encoder(layers.AttentionOptions):
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
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    norm_eps: float = 1e-6
    remat: bool = False
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.pos_embed == 'learned':
            x = layers.LearnedPositionEmbedding(name='posembed_input')(x)
        elif self.pos_embed in ('sincos1d', 'sincos2d'):
            h, w, dim = *self.grid, x.shape[-1]
            pe = layers.sincos_1d(h * w, dim) if self.pos_embed == 'sincos1d' else \
                layers.sincos_2d(h, w, dim)
            pe = np.pad(pe, ((0, 0), (self.num_prefix_tokens, 0), (0, 0)))
            x = x + jnp.asarray(pe, x.dtype)
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
        block = layers.remat_block(EncoderBlock, full=self.remat)
        rates = layers.drop_path_rates(self.drop_path_rate, self.depth)
        options = dict(self.attention_options(), act_layer=self.act_layer, norm_eps=self.norm_eps)
        if self.scan_layers:
            # One block traced once; its parameters (and sown attention weights) get a leading
            # layer axis; each layer draws its own dropout keys and reads its drop-path rate.
            scan = nn.scan(_scanned_block, variable_axes={'params': 0, 'intermediates': 0},
                           split_rngs={'params': True, 'dropout': True}, in_axes=(0, nn.broadcast),
                           length=self.depth)
            blocks = block(self.num_heads, self.mlp_dim, **options, name=SCANNED_BLOCKS)
            x, _ = scan(blocks, x, jnp.asarray(rates) if self.drop_path_rate else None,
                        deterministic)
        else:
            for i, rate in enumerate(rates):
                x = block(self.num_heads, self.mlp_dim, drop_path_rate=rate, **options,
                          name=f'encoderblock_{i}')(x, deterministic)
        return nn.LayerNorm(self.norm_eps, dtype=self.dtype, name='encoder_norm')(x)


def _short_name(name: str) -> str:
    """Lower case without `ViT-` and the size's `_` (`ViT-B_16` -> `b16`, `R50+ViT-B_16` ->
    `r50_b16`); the G of ViT-G keeps its case, as big_vision's g/14 and G/14 are two sizes; the
    BiT ResNets and `testing` keep their registered names."""
    if 'ViT-' not in name:
        return name
    short = name.replace('ViT-', '').replace('+', '_')
    return re.sub(r'([a-zA-Z])_(\d)', r'\1\2', short if short.startswith('G_') else short.lower())


class VisionTransformer(layers.AttentionOptions, contract.Family):
    """ViT: images `[batch, height, width, in_chans]` -> logits `[batch, num_classes]`.

    Options use timm's names. `patch_kernel_size` > `patch_size` (with `patch_padding`) makes
    patches overlap. `resnet_layers` (units per stage; `()` for the root alone) puts the hybrid's
    ResNet (`resnet.hybrid_stem`, `resnet_width` times 64 root channels) before the patch
    embedding, whose patches are then taken from the ResNet's feature map. `dtype` is the
    compute dtype; parameters stay float32. `norm_eps` is every LayerNorm's epsilon (1e-6 as the
    original; Hugging Face's ViT uses 1e-12 with `act_layer='gelu'`). `num_classes=0` returns
    the pooled features `[batch, embed_dim or representation_size]`. Each block keeps only its
    matmul and attention outputs for the backward pass (`layers.save_matmuls`); `remat=True`
    keeps only its input (less memory, ~1/3 more compute).
    `scan_layers=True` runs the blocks as one `nn.scan` (compiled once, not `depth` times): their
    parameters are stacked `[depth, ...]` under `Transformer/encoderblock` (big_vision's layout);
    `vit_jax.weights` loads and saves either way. Activations carry logical axis names (`batch`,
    `tokens`, `embed`, ...) that the trainer maps onto the device mesh (`vit_jax.train.sharding`).

    `distilled=True` is DeiT's distilled ViT (timm's `VisionTransformerDistilled`): a
    distillation token `dist_token` after the class token, read by its own head `head_dist`; in
    training (`train=True`) the model returns both heads' logits `(head, head_dist)`, each
    `[batch, num_classes]` (the second learns from a teacher, `vit_jax.train.distill`), in
    evaluation their average; `num_classes=0` returns the average of the two tokens' features.
    `dist_head=False` keeps the distillation token in the sequence but classifies (or, with
    `num_classes=0`, returns) the class token alone, as Hugging Face's
    `DeiTForImageClassification` and `DeiTModel` do; `representation_size` is then allowed.
    """

    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None  # the MLP's hidden width, when not embed_dim * mlp_ratio
    classifier: str = 'token'
    pos_embed: str = 'learned'
    patch_kernel_size: int | None = None
    patch_padding: int = 0
    representation_size: int | None = None
    drop_path_rate: float = 0.0
    act_layer: str = 'gelu_tanh'
    in_chans: int = 3
    head_bias_init: float = 0.0
    norm_eps: float = 1e-6
    resnet_layers: tuple[int, ...] | None = None
    resnet_width: float = 1.0
    remat: bool = False
    scan_layers: bool = False
    distilled: bool = False
    dist_head: bool = True

    stacked_layers = (f'Transformer/{SCANNED_BLOCKS}',)
    stem_layers = (r'(cls|dist_token|embedding|conv_root|gn_root|block\d+|'
                   r'Transformer/posembed_input)(/|$)')
    block_layers = ((r'Transformer/encoderblock_(\d+)/', ()),)
    feature_modules = rf'Transformer/{SCANNED_BLOCKS}(_\d+)?'
    feature_norm = 'Transformer/encoder_norm'
    no_weight_decay = ('pos_embedding', 'cls', 'dist_token')
    model_splits = (*contract.attention_splits(r'MultiHeadDotProductAttention_\d+'),
                    *contract.mlp_splits(r'MlpBlock_\d+'),
                    *contract.replicated(r'LayerNorm_\d+', 'encoder_norm', 'posembed_input',
                                         'embedding', 'pre_logits', r'head(_dist)?'),
                    *resnet.STEM_SPLITS, contract.Split('/(cls|dist_token)$'))
    # The configs/vit.py names (the BiT ResNets too; DeiT's distilled ViTs have none).
    short_names = contract.ShortNames('ViT', ('ViT-*', 'R*+ViT-*', 'BiT-*', 'testing'),
                                      _short_name)

    @staticmethod
    def checkpoints() -> contract.Checkpoints:
        return contract.Checkpoints(
            convert=_convert, resize=_resize, hf_model_types=('vit', 'deit'),
            hf_options=_hf_options, to_hf=_to_hf,
            layouts='the original google-research/vision_transformer .npz, big_vision .npz, '
                    'timm VisionTransformer and Hugging Face ViTModel / '
                    'ViTForImageClassification state dicts')

    def __post_init__(self) -> None:
        contract.check_choices((
            ('classifier', self.classifier, CLASSIFIERS),
            ('pos_embed', self.pos_embed, POS_EMBEDS),
            ('act_layer', self.act_layer, layers.ACTIVATIONS),
            ('attn_impl', self.attn_impl, layers.ATTENTION_IMPLS),
            ('dtype', self.dtype, contract.DTYPES)))
        if self.distilled and (self.classifier != 'token' or (
                self.representation_size and self.dist_head)):
            raise ModelError('distilled=True (DeiT) reads a class and a distillation token: use '
                             "classifier='token' and no representation_size")
        if self.embed_dim % self.num_heads:
            raise ModelError(f'embed_dim={self.embed_dim} is not divisible by '
                             f'num_heads={self.num_heads}')
        self.grid  # noqa: B018 -- validates img_size against the patch embedding
        super().__post_init__()

    @property
    def head_names(self) -> tuple[str, ...]:
        """The class head, and the distillation head of a distilled model with `dist_head`."""
        return ('head', 'head_dist') if self.distilled and self.dist_head else ('head',)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token (`classifier='token'`), then DeiT's
        distillation token (`distilled`)."""
        return (self.classifier == 'token') + self.distilled

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid `(rows, cols)` that `img_size` gives."""
        kernel = self.patch_kernel_size or self.patch_size
        stride = 1 if self.resnet_layers is None else resnet.hybrid_stride(self.resnet_layers)
        n = layers.conv_output_size(self.img_size / stride, kernel, self.patch_size,
                                    self.patch_padding)
        if n < 1 or not n.is_integer():
            hint = layers.valid_sizes_hint(self.img_size // stride, kernel, self.patch_size,
                                           self.patch_padding)
            hint = ' or '.join(str(int(v) * stride) for v in hint.split(' or '))
            what = f'the ResNet stride {stride} and ' if stride > 1 else ''
            raise ModelError(
                f'img_size={self.img_size} does not fit {what}patch_size={self.patch_size} '
                f'(kernel {kernel}, padding {self.patch_padding}); use img_size={hint}')
        return int(n), int(n)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False,
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        layers.check_images(images, self.in_chans)
        x = images
        if self.resnet_layers is not None:
            x = resnet.hybrid_stem(x, self.resnet_layers, self.resnet_width, self.dtype)
        x = layers.PatchEmbed(self.embed_dim, self.patch_size, self.patch_kernel_size,
                              self.patch_padding, in_chans=x.shape[-1], dtype=self.dtype,
                              name='embedding')(x)
        batch, h, w, dim = x.shape
        if self.pos_embed == 'learned' and (h, w) != self.grid:
            raise ModelError(
                f'this model has a learned position embedding for {self.img_size}px images '
                f'({self.grid[0]}x{self.grid[1]} patches) but got {images.shape[1]}x'
                f'{images.shape[2]}px; resize the images, or create the model with '
                f'img_size={images.shape[1]} (and resize loaded weights with vit_jax.weights)')
        x = nn.with_logical_constraint(x.reshape(batch, h * w, dim), ('batch', 'tokens', 'embed'))
        prefix = self.num_prefix_tokens
        tokens = [self.param('cls', nn.initializers.zeros, (1, 1, dim))] if prefix else []
        if self.distilled:  # timm's init: the two tokens must differ for the heads to
            tokens.append(self.param('dist_token', nn.initializers.normal(0.02), (1, 1, dim)))
        if tokens:
            x = jnp.concatenate([jnp.broadcast_to(t.astype(x.dtype), (batch, 1, dim))
                                 for t in tokens] + [x], 1)
        x = Encoder(
            self.depth, self.num_heads, self.mlp_dim or int(self.embed_dim * self.mlp_ratio),
            grid=(h, w), num_prefix_tokens=prefix, pos_embed=self.pos_embed,
            drop_path_rate=self.drop_path_rate, act_layer=self.act_layer, norm_eps=self.norm_eps,
            remat=self.remat, scan_layers=self.scan_layers, **self.attention_options(),
            name='Transformer')(x, deterministic=not train)
        if self.distilled and self.dist_head:
            return self._distilled_heads(layers.token(x, 0), layers.token(x, 1), train)
        x = layers.token(x, 0) if self.classifier == 'token' else x.mean(axis=1)
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                  name='pre_logits')(x))
        return layers.classifier_head(x, self.num_classes, dtype=self.dtype,
                                      bias_init=nn.initializers.constant(self.head_bias_init))

    def _distilled_heads(self, x: jax.Array, x_dist: jax.Array, train: bool,
                         ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """DeiT's two heads on the class and distillation tokens `[batch, dim]`."""
        if not self.num_classes:
            return ((x + x_dist) / 2).astype(jnp.float32)
        logits = [nn.with_logical_constraint(
            nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.constant(self.head_bias_init), name=name)(t)
            .astype(jnp.float32), ('batch', 'classes'))
            for name, t in (('head', x), ('head_dist', x_dist))]
        return tuple(logits) if train else (logits[0] + logits[1]) / 2


# The original model zoo: (width, depth, heads) per size, and dropout as the original configs set.
_SIZES = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16),
          'H': (1280, 32, 16)}
# The big ViTs of big_vision (Zhai et al., 2022; So400m: Alabdulmohsin et al., 2023):
# (width, depth, MLP width, heads), patch 14, in the original parameter tree.
_BIG = {'So400m_14': (1152, 27, 4304, 16), 'g_14': (1408, 40, 6144, 16),
        'G_14': (1664, 48, 8192, 16), 'e_14': (1792, 56, 15360, 16)}
_ZOO = {'Ti_16': 0.0, 'S_16': 0.0, 'S_32': 0.0, 'B_8': 0.0, 'B_16': 0.0, 'B_32': 0.0,
        'L_16': 0.1, 'L_32': 0.0, 'H_14': 0.1}

# Hybrids: (ResNet units per stage, ViT size, patch size on the ResNet's feature map).
_HYBRIDS = {'R+ViT-Ti_16': ((), 'Ti', 8), 'R26+ViT-S_32': ((2, 2, 2, 2), 'S', 1),
            'R26+ViT-B_32': ((2, 2, 2, 2), 'B', 1), 'R50+ViT-B_16': ((3, 4, 9), 'B', 1),
            'R50+ViT-L_32': ((3, 4, 6, 3), 'L', 1)}


def _register_zoo() -> None:
    for variant, drop_rate in _ZOO.items():
        size, patch = variant.split('_')
        width, depth, heads = _SIZES[size]
        kwargs = dict(patch_size=int(patch), embed_dim=width, depth=depth, num_heads=heads,
                      drop_rate=drop_rate)
        register(f'ViT-{variant}', VisionTransformer, **kwargs)
        register(f'ViT-{variant}-gap-norep', VisionTransformer, classifier='gap', **kwargs)
    for variant, (width, depth, mlp_dim, heads) in _BIG.items():
        register(f'ViT-{variant}', VisionTransformer, patch_size=14, embed_dim=width,
                 depth=depth, mlp_dim=mlp_dim, num_heads=heads)
    for name, (layers_, size, patch) in _HYBRIDS.items():
        width, depth, heads = _SIZES[size]
        register(name, VisionTransformer, resnet_layers=layers_, patch_size=patch, embed_dim=width,
                 depth=depth, num_heads=heads)
    # DeiT's distilled ViTs (timm's `deit_*_distilled_patch16_224`): exact GELU, DeiT's
    # evaluation preprocessing.
    for size, (width, depth, heads) in (('tiny', _SIZES['Ti']), ('small', _SIZES['S']),
                                        ('base', _SIZES['B'])):
        register(f'deit_{size}_distilled_patch16_224', VisionTransformer, pretrained_cfg=dict(
            crop_pct=0.875, interpolation='bicubic', **NORMALIZATIONS['imagenet']),
            embed_dim=width, depth=depth, num_heads=heads, act_layer='gelu', distilled=True)
    register('testing', VisionTransformer, patch_size=16, embed_dim=10, depth=1, num_heads=2,
             mlp_ratio=1.0, drop_rate=0.1)
    register('ViT-digits', VisionTransformer, img_size=16, patch_size=4, embed_dim=64, depth=4,
             num_heads=4, mlp_ratio=2.0, classifier='gap')


_register_zoo()


# ----------------------------------------------------------------------------- weights
# The original `.npz` uses this module's own names and needs no mapping; big_vision and timm do.

_BIG_VISION_BLOCK = {'LayerNorm_0': 'LayerNorm_0', 'MultiHeadDotProductAttention_0':
                     'MultiHeadDotProductAttention_1', 'LayerNorm_1': 'LayerNorm_2',
                     'MlpBlock_0': 'MlpBlock_3'}


def _from_big_vision(ckpt: convert.Flat) -> convert.Flat:
    """big_vision names: top-level `pos_embedding`, block modules numbered from 0 (its scanned
    `encoderblock/...` arrive unstacked from `weights.load`, as `encoderblock_{i}/...`)."""
    out = {}
    for key, value in ckpt.items():
        key = key.removeprefix('params/')
        if key == 'pos_embedding':
            out['params/Transformer/posembed_input/pos_embedding'] = value
        elif key.startswith('Transformer/encoderblock_'):
            block, module, rest = key.split('/', 3)[1:]
            module = _BIG_VISION_BLOCK.get(module, module)
            out[f'params/Transformer/{block}/{module}/{rest}'] = value
        else:
            out[f'params/{key}'] = value
    return out


def _from_timm(sd: convert.Flat, model: VisionTransformer) -> convert.Flat:
    """timm `VisionTransformer` (and hybrid, and DeiT distilled) state dicts."""
    if 'dist_token' in sd and not model.distilled:
        raise ModelError('the checkpoint is a distilled DeiT (it has a distillation token); '
                         'create the model with distilled=True (weights.hf_model(directory) '
                         'does for a Hugging Face directory)')
    out = {'params/Transformer/posembed_input/pos_embedding': sd.get('pos_embed'),
           'params/cls': sd.get('cls_token'), 'params/dist_token': sd.get('dist_token'),
           'params/embedding/kernel': convert.conv(sd['patch_embed.proj.weight']),
           'params/embedding/bias': sd.get('patch_embed.proj.bias'),
           'params/Transformer/encoder_norm/scale': sd.get('norm.weight'),
           'params/Transformer/encoder_norm/bias': sd.get('norm.bias'),
           'params/head/kernel': convert.linear(sd['head.weight']) if 'head.weight' in sd else None,
           'params/head/bias': sd.get('head.bias'),
           'params/head_dist/kernel': convert.linear(sd['head_dist.weight'])
           if 'head_dist.weight' in sd else None,
           'params/head_dist/bias': sd.get('head_dist.bias')}
    for i in range(model.depth):
        b, t = f'blocks.{i}.', f'params/Transformer/encoderblock_{i}/'
        if b + 'attn.qkv.weight' not in sd:
            break
        out.update(convert.attention(
            t + 'MultiHeadDotProductAttention_1', sd[b + 'attn.qkv.weight'],
            sd.get(b + 'attn.qkv.bias'), sd[b + 'attn.proj.weight'], sd[b + 'attn.proj.bias'],
            model.num_heads))
        for src, dst in (('norm1', 'LayerNorm_0'), ('norm2', 'LayerNorm_2')):
            out[f'{t}{dst}/scale'], out[f'{t}{dst}/bias'] = sd[b + src + '.weight'], sd[
                b + src + '.bias']
        for src, dst in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
            out[f'{t}MlpBlock_3/{dst}/kernel'] = convert.linear(sd[f'{b}mlp.{src}.weight'])
            out[f'{t}MlpBlock_3/{dst}/bias'] = sd[f'{b}mlp.{src}.bias']
    backbone = 'patch_embed.backbone.'
    if backbone + 'stem.conv.weight' in sd or backbone + 'conv.weight' in sd:
        stem = backbone + ('stem.' if backbone + 'stem.conv.weight' in sd else '')
        out['params/conv_root/kernel'] = convert.conv(sd[stem + 'conv.weight'])
        out['params/gn_root/scale'] = sd[stem + 'norm.weight']
        out['params/gn_root/bias'] = sd[stem + 'norm.bias']
        out.update(resnet.torch_stages(sd, backbone, 'params/'))
    return {k: v for k, v in out.items() if v is not None}


# Hugging Face ViT and DeiT names -> timm's: the hub files' names and the ones transformers 5
# uses in memory (`layers.N.attention.q_proj`, `layers.N.mlp.fc1`); ViTModel has no `vit.`.
_HF_TO_TIMM = (
    (r'^embeddings\.cls_token$', 'cls_token'),
    (r'^embeddings\.distillation_token$', 'dist_token'),
    (r'^embeddings\.position_embeddings$', 'pos_embed'),
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^(encoder\.layer|layers)\.(\d+)\.', r'blocks.\2.'),
    (r'\.attention\.(attention\.query|q_proj)\.', '.attn.q.'),
    (r'\.attention\.(attention\.key|k_proj)\.', '.attn.k.'),
    (r'\.attention\.(attention\.value|v_proj)\.', '.attn.v.'),
    (r'\.attention\.(output\.dense|o_proj)\.', '.attn.proj.'),
    (r'\.(intermediate\.dense|mlp\.fc1)\.', '.mlp.fc1.'),
    (r'\.(output\.dense|mlp\.fc2)\.', '.mlp.fc2.'),
    (r'\.layernorm_before\.', '.norm1.'), (r'\.layernorm_after\.', '.norm2.'),
    (r'^layernorm\.', 'norm.'), (r'^(classifier|cls_classifier)\.', 'head.'),
    (r'^distillation_classifier\.', 'head_dist.'), (r'^pooler\.dense\.', 'pre_logits.'),
)


def _from_hf(ckpt: convert.Flat, model: VisionTransformer) -> convert.Flat:
    """Hugging Face `ViTModel` / `DeiTModel` (with or without its pooler, our `pre_logits`),
    `ViTForImageClassification`, `DeiTForImageClassification` and
    `DeiTForImageClassificationWithTeacher` state dicts, in either spelling."""
    sd = convert.fuse_qkv(convert.rename(ckpt, ((r'^(vit|deit)\.', ''), *_HF_TO_TIMM)))
    out = _from_timm(sd, model)
    if 'pre_logits.weight' in sd:
        out['params/pre_logits/kernel'] = convert.linear(sd['pre_logits.weight'])
        out['params/pre_logits/bias'] = sd['pre_logits.bias']
    return out


# Hugging Face's `hidden_act` names -> this model's `act_layer` (the first of each is written).
_HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh',
                   'relu': 'relu', 'silu': 'silu'}


def _hf_options(config: dict, names: frozenset[str]) -> dict:
    """`VisionTransformer` options of a Hugging Face ViT or DeiT `config.json`: DeiT's
    embeddings always hold a distillation token (`distilled=True`), read by a head of its own
    only in `DeiTForImageClassificationWithTeacher` (`dist_head`)."""
    act = _HF_ACTIVATIONS.get(config.get('hidden_act', 'gelu'))
    if not config.get('qkv_bias', True) or act is None:
        raise ModelError(f'a Hugging Face ViT with qkv_bias={config.get("qkv_bias")} and '
                         f'hidden_act={config.get("hidden_act")!r} has no vit_jax equivalent')
    dist_head = 'distillation_classifier.weight' in names
    classify = 'classifier.weight' in names or dist_head
    pooler = any(n.endswith('pooler.dense.weight') for n in names)
    return dict(
        img_size=config['image_size'], patch_size=config['patch_size'],
        in_chans=config.get('num_channels', 3), embed_dim=config['hidden_size'],
        depth=config['num_hidden_layers'], num_heads=config['num_attention_heads'],
        mlp_ratio=config['intermediate_size'] / config['hidden_size'],
        act_layer=act, norm_eps=config.get('layer_norm_eps', 1e-12),
        num_classes=len(config.get('id2label') or {}) if classify else 0,
        representation_size=config.get('pooler_output_size', config['hidden_size'])
        if pooler and not classify else None,
        distilled=config['model_type'] == 'deit', dist_head=dist_head)


# This model's names, as `convert.to_torch` writes them -> timm's, which `_HF_TO_TIMM` reads.
_OWN_TO_TIMM = (
    (r'^cls$', 'cls_token'), (r'^Transformer\.posembed_input\.pos_embedding$', 'pos_embed'),
    (r'^embedding\.', 'patch_embed.proj.'), (r'^Transformer\.encoder_norm\.', 'norm.'),
    (r'^Transformer\.encoderblock_(\d+)\.', r'blocks.\1.'),
    (r'\.MultiHeadDotProductAttention_1\.', '.attn.'),
    (r'\.LayerNorm_0\.', '.norm1.'), (r'\.LayerNorm_2\.', '.norm2.'),
    (r'\.MlpBlock_3\.Dense_0\.', '.mlp.fc1.'), (r'\.MlpBlock_3\.Dense_1\.', '.mlp.fc2.'),
)


def _to_hf(model: VisionTransformer, flat: convert.Flat) -> tuple[dict, convert.Flat]:
    """`config.json` and hub-named arrays of a `ViTForImageClassification` (a `ViTModel` with
    its pooler when the model has `pre_logits` and no head); of a distilled model, the DeiT
    class of the same shape (`DeiTForImageClassificationWithTeacher` with `dist_head`)."""
    if (model.classifier != 'token' or model.pos_embed != 'learned' or model.resnet_layers
            is not None or model.patch_kernel_size not in (None, model.patch_size)
            or model.act_layer not in ('gelu', 'gelu_tanh')
            or (model.representation_size and model.num_classes)):
        raise ModelError('Hugging Face ViT has a class token, learned position embeddings, plain '
                         'patches, GELU and no pre-logits before a head; this model differs')
    if model.distilled and model.dist_head and not model.num_classes:
        raise ModelError("Hugging Face's DeiTModel returns the class token alone, this model the "
                         'average of both tokens; save it with dist_head=False')
    params = {k.removeprefix('params/'): v for k, v in flat.items() if k.startswith('params/')}
    arrays = convert.rename(convert.to_torch(params), _OWN_TO_TIMM)
    classify, two_heads = bool(model.num_classes), len(model.head_names) == 2
    kind = 'deit' if model.distilled else 'vit'
    out = convert.hf_names(arrays, _HF_TO_TIMM, f'{kind}.' if classify else '')
    if two_heads:  # the class head of DeiTForImageClassificationWithTeacher
        out = {f'cls_{k}' if k.startswith('classifier.') else k: v for k, v in out.items()}
    name = 'DeiT' if model.distilled else 'ViT'
    architecture = (('DeiTForImageClassificationWithTeacher' if two_heads else
                     f'{name}ForImageClassification') if classify else f'{name}Model')
    config = dict(
        architectures=[architecture], model_type=kind,
        image_size=model.img_size, patch_size=model.patch_size, num_channels=model.in_chans,
        hidden_size=model.embed_dim, num_hidden_layers=model.depth,
        num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim or int(model.embed_dim * model.mlp_ratio),
        hidden_act=next(k for k, v in _HF_ACTIVATIONS.items() if v == model.act_layer),
        layer_norm_eps=model.norm_eps, qkv_bias=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pooler_output_size=model.representation_size or model.embed_dim,
        pooler_act='tanh')
    return config, out


def _convert(ckpt: convert.Flat, model: VisionTransformer) -> convert.Flat | None:
    if 'patch_embed.proj.weight' in ckpt:
        return _from_timm(ckpt, model)
    if any(k.endswith('embeddings.patch_embeddings.projection.weight') for k in ckpt):
        return _from_hf(ckpt, model)
    if any(k.removeprefix('params/') == 'pos_embedding' or '/MultiHeadDotProductAttention_0/' in k
           for k in ckpt):
        return _from_big_vision(ckpt)
    return None


def _resize(key: str, value: np.ndarray, shape: tuple[int, ...],
            model: VisionTransformer) -> np.ndarray | None:
    """A learned position embedding `[1, prefix + n * n, dim]` for another resolution: the class
    token's entry kept, the grid interpolated linearly (`scipy.ndimage.zoom`, order 1), as the
    original fine-tuning code does."""
    if not key.endswith('posembed_input/pos_embedding') or value.shape[-1] != shape[-1]:
        return None
    return layers.resample_pos_embed(value, model.grid, model.num_prefix_tokens, 'zoom_linear')

