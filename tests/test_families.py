"""Every registered model against the family contract (`vit_jax.models.contract`), one table of
exact parameter counts for every registered name, and the resampling of learned tables that
lets checkpoints load at another resolution or window.

Counting uses `jax.eval_shape` (no arrays are made). The default run checks one small variant
per family; `pytest -m slow` checks every registered name.

Every parameter is covered by its family's tensor-parallel splits (`contract.uncovered`):
explicitly split over the model axis, or explicitly kept whole.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_jax
from vit_jax import tree, weights
from vit_jax.models import contract, families, get_spec, layers, model_options
from vit_jax.models.dhvt import DHVT
from vit_jax.models.sret import SReT
from vit_jax.models.swin import SwinTransformer
from vit_jax.train import step

# Parameters of each registered model as registered (its own class count and image size).
PARAM_COUNTS = {
    # google-research/vision_transformer models_test.py and the published checkpoints. The
    # '-gap-norep' variants drop the class token and its position embedding (2 * width, as
    # test_models checks); ViT-B_16-gap-norep is published.
    'ViT-Ti_16': 5_717_416, 'ViT-S_16': 22_050_664, 'ViT-S_32': 22_878_952,
    'ViT-B_8': 86_576_872, 'ViT-B_16': 86_567_656, 'ViT-B_32': 88_224_232,
    'ViT-L_16': 304_326_632, 'ViT-L_32': 306_535_400, 'ViT-H_14': 632_045_800,
    'ViT-Ti_16-gap-norep': 5_717_032, 'ViT-S_16-gap-norep': 22_049_896,
    'ViT-S_32-gap-norep': 22_878_184, 'ViT-B_8-gap-norep': 86_575_336,
    'ViT-B_16-gap-norep': 86_566_120, 'ViT-B_32-gap-norep': 88_222_696,
    'ViT-L_16-gap-norep': 304_324_584, 'ViT-L_32-gap-norep': 306_533_352,
    'ViT-H_14-gap-norep': 632_043_240,
    # big_vision's shapes in the original tree (class token, 1000 classes, 224 px): counted as
    # patch embedding 14*14*3*D + D, class token D, position embedding 257*D, depth *
    # (4*D*D + 2*D*M + 9*D + M) per block, final norm 2*D, head D*1000 + 1000 (the formula
    # gives ViT-B_16's and ViT-H_14's published counts above); g and G as in Zhai et al. 2022
    # (1011M, 1843M without a head).
    'ViT-So400m_14': 413_597_656, 'ViT-g_14': 1_012_611_432, 'ViT-G_14': 1_844_440_680,
    'ViT-e_14': 3_807_214_312,
    'testing': 21_390,  # the tiny test model (ours)
    'ViT-digits': 203_176,  # the main job's model (ours): 138,826 with its 10-class head
    # DeiT's distilled ViTs: timm 1.0 (a distillation token and head more than DeiT's ViT).
    'deit_tiny_distilled_patch16_224': 5_910_800, 'deit_small_distilled_patch16_224': 22_436_432,
    'deit_base_distilled_patch16_224': 87_338_192,
    # Hybrids (the original configs).
    'R+ViT-Ti_16': 6_337_704, 'R26+ViT-S_32': 36_431_912, 'R26+ViT-B_32': 101_383_976,
    'R50+ViT-B_16': 98_659_112, 'R50+ViT-L_32': 328_994_856,
    # BiT: timm's resnetv2_*_bit.
    'BiT-R50x1': 25_549_352, 'BiT-R50x3': 217_319_080, 'BiT-R101x1': 44_541_480,
    'BiT-R101x3': 387_934_888, 'BiT-R152x2': 236_335_208, 'BiT-R152x4': 936_533_224,
    # Swin and ConvNeXt: timm 1.0 and the published checkpoints.
    'swin_tiny_patch4_window7_224': 28_288_354, 'swin_small_patch4_window7_224': 49_606_258,
    'swin_base_patch4_window7_224': 87_768_224, 'swin_base_patch4_window12_384': 87_903_584,
    'swin_large_patch4_window7_224': 196_532_476, 'swin_large_patch4_window12_384': 196_735_516,
    'convnext_tiny': 28_589_128, 'convnext_small': 50_223_688, 'convnext_base': 88_591_464,
    'convnext_large': 197_767_336, 'convnext_xlarge': 350_196_968,
    # DHVT: the authors' models (ArieSeirack/DHVT) with each dataset's class count.
    'dhvt_tiny_cifar_patch4': 6_008_650, 'dhvt_small_cifar_patch4': 23_425_450,
    'dhvt_tiny_cifar_patch2': 5_845_162, 'dhvt_small_cifar_patch2': 22_766_698,
    'dhvt_tiny_domain_patch16': 6_105_975, 'dhvt_small_domain_patch16': 23_788_431,
    'dhvt_tiny_imagenet_patch16': 6_267_334, 'dhvt_small_imagenet_patch16': 24_040_606,
    # SReT: the authors' PyTorch code (shared blocks counted once). The first three are the
    # paper's; `_wo_slice` T / LT were built with np_mlp_ratio=1 (their constructors omit it),
    # the fine-tunes with image_size 384 / 512; distilled models are the same networks.
    'SReT_T': 4_755_979, 'SReT_LT': 4_988_024, 'SReT_S': 20_899_692,
    'SReT_T_distill': 4_755_979, 'SReT_LT_distill': 4_988_024, 'SReT_S_distill': 20_899_692,
    'SReT_T_wo_slice': 4_755_979, 'SReT_LT_wo_slice': 4_988_024, 'SReT_S_wo_slice': 20_899_692,
    'SReT_T_wo_slice_distill': 4_755_979, 'SReT_LT_wo_slice_distill': 4_988_024,
    'SReT_S_wo_slice_distill': 20_899_692, 'SReT_S_wo_slice_finetune_384': 21_091_212,
    'SReT_T_wo_slice_distill_finetune_384': 4_853_259,
    'SReT_S_wo_slice_distill_finetune_512': 21_317_004,
}
# One small variant per family (and the hybrid stem, the '-gap-norep' head): the default run.
FAST = ('testing', 'ViT-digits', 'ViT-Ti_16', 'ViT-Ti_16-gap-norep', 'R+ViT-Ti_16', 'BiT-R50x1',
        'deit_tiny_distilled_patch16_224',
        'swin_tiny_patch4_window7_224', 'convnext_tiny', 'dhvt_tiny_cifar_patch4', 'SReT_T')
NAMES = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
         for n in vit_jax.list_models()]
# Options that add parameters no registered variant has (the split check's default run).
OPTIONS = [('testing', dict(scan_layers=True)), ('testing', dict(representation_size=8)),
           ('dhvt_tiny_cifar_patch4', dict(sope=False, daff=False, hi_mhsa=False))]


@functools.cache
def shapes(name: str, **overrides) -> dict[str, jax.ShapeDtypeStruct]:
    return weights.model_shapes(vit_jax.create_model(name, **overrides))


def images(model, batch=1):
    return jax.ShapeDtypeStruct((batch, model.img_size, model.img_size, model.in_chans),
                                jnp.float32)


def test_every_registered_name_has_a_count():
    missing = sorted(set(vit_jax.list_models()) - set(PARAM_COUNTS))
    assert not missing, f'add the parameter counts of {missing} to PARAM_COUNTS'
    assert sorted(PARAM_COUNTS) == vit_jax.list_models()
    assert set(FAST) <= set(PARAM_COUNTS)


@pytest.mark.parametrize('name', vit_jax.list_models())
def test_declares_the_contract(name):
    model = vit_jax.create_model(name)
    contract.check_family(type(model))
    assert isinstance(model, contract.Family)
    options = model_options(name)
    for field in contract.FIELDS:
        assert getattr(model, field) == options[field], field
    assert isinstance(model.num_classes, int) and model.num_classes > 0
    assert isinstance(model.img_size, int) and isinstance(model.in_chans, int)
    assert model.dtype in contract.DTYPES
    assert model.rng_streams[0] == 'dropout' and all(isinstance(s, str)
                                                     for s in model.rng_streams)
    assert set(model.stacked_layers) <= set(tree.STACKED_LAYERS)
    assert model.head_names and all(isinstance(h, str) for h in model.head_names)
    cfg = get_spec(name).pretrained_cfg
    assert cfg['input_size'] == (model.img_size, model.img_size, model.in_chans)
    assert set(cfg) >= {'input_size', 'crop_pct', 'interpolation', 'mean', 'std'}
    assert 0 < cfg['crop_pct'] <= 1 and cfg['interpolation'] in ('bilinear', 'bicubic')
    assert len(cfg['mean']) == len(cfg['std']) == model.in_chans


@pytest.mark.parametrize('name', NAMES)
def test_parameter_count_and_head_names(name):
    model = vit_jax.create_model(name)
    params = {k: v for k, v in shapes(name).items() if k.startswith('params/')}
    assert sum(v.size for v in params.values()) == PARAM_COUNTS[name]
    for head in model.head_names:
        kernel = params[f'params/{head}/kernel']
        assert kernel.shape[-1] == model.num_classes, head


@pytest.mark.parametrize('name', FAST)
def test_applies_with_its_rng_streams_and_float32_logits(name):
    """Training needs exactly the declared RNG streams; a bfloat16 model gives float32 logits
    `[batch, num_classes]` (one array per head of a distilled model)."""
    for dtype in ('bfloat16',):
        model = vit_jax.create_model(name, dtype=dtype)
        variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x), images(model))
        mutable = [c for c in variables if c != 'params']
        rngs = step.rng_streams(model, jax.random.key(1))
        logits, _ = jax.eval_shape(
            lambda v, x, r, m=model, c=mutable: m.apply(v, x, train=True, rngs=r, mutable=c),
            variables, images(model, 2), rngs)
        heads = logits if isinstance(logits, tuple) else (logits,)
        assert len(heads) == len(model.head_names)
        for head in heads:
            assert (head.shape, head.dtype) == ((2, model.num_classes), jnp.float32), dtype


@pytest.mark.parametrize('name', [n for n in FAST if 'scan_layers' in model_options(n)])
def test_stacked_layers_exist_when_scanning(name):
    model = vit_jax.create_model(name, scan_layers=True)
    stacked = shapes(name, scan_layers=True)
    for path in model.stacked_layers:
        found = [v for k, v in stacked.items() if k.startswith(f'params/{path}/')]
        assert found and all(v.shape[0] == model.depth for v in found), path
    assert tree.unstack_layers(stacked).keys() == shapes(name).keys()


# ----------------------------------------------------------------------------- model splits


def test_every_family_has_a_fast_variant():
    assert {get_spec(n).module for n in FAST} == set(families())


@pytest.mark.parametrize('name', NAMES)
def test_split_rules_cover_every_parameter(name):
    assert contract.uncovered(get_spec(name).module, shapes(name)) == []


@pytest.mark.parametrize('name, options', OPTIONS, ids=[f'{n}-{o}' for n, o in OPTIONS])
def test_split_rules_cover_the_parameters_of_options(name, options):
    assert contract.uncovered(get_spec(name).module, shapes(name, **options)) == []


def test_a_family_missing_a_split_is_not_covered():
    vit = get_spec('testing').module
    params = [k for k in shapes('testing') if k.startswith('params/')]

    class NoMlpSplits(contract.Family):
        model_splits = tuple(s for s in vit.model_splits if 'MlpBlock' not in s.pattern)

    class SplitsAMissingDimension(contract.Family):
        model_splits = (contract.Split('/head/kernel$', 2), *vit.model_splits)

    mlp = [k for k in params if '/MlpBlock_3/' in k]
    assert len(mlp) == 4 and contract.uncovered(NoMlpSplits, shapes('testing')) == mlp
    assert contract.uncovered(SplitsAMissingDimension, shapes('testing')) == ['params/head/kernel']
    assert contract.uncovered(contract.Family, shapes('testing')) == params  # declares none


# ----------------------------------------------------------------------------- resampling


def test_bicubic_resampling_is_timms(timm):
    """Swin's relative position bias tables resample as timm's
    `resize_rel_pos_bias_table_simple` (PyTorch bicubic, align_corners=False)."""
    import torch
    from timm.layers import resize_rel_pos_bias_table_simple

    table = np.random.RandomState(0).randn(13 * 13, 3).astype(np.float32)
    for window in (4, 12):  # shrink and grow
        new = (2 * window - 1) ** 2
        ours = layers.resample_grid(table.reshape(13, 13, 3), (2 * window - 1,) * 2, 'bicubic')
        theirs = resize_rel_pos_bias_table_simple(torch.from_numpy(table), (window, window),
                                                  (new, 3)).numpy()
        np.testing.assert_allclose(ours.reshape(new, 3), theirs, atol=1e-5)


def _init(model):
    x = jnp.zeros((1, model.img_size, model.img_size, model.in_chans))
    return jax.jit(lambda v: model.init(jax.random.key(0), v))(x)


def _reload(model, other):
    """`model`'s variables loaded into `other` (another size): the flat arrays of both."""
    variables = _init(model)
    loaded = weights.load(other, variables, strict=True)
    return tree.flatten(variables), tree.flatten(loaded)


def _check_resized(old, new, key):
    """Only the resampled tables differ (`weights.load(strict=True)` checked every shape)."""
    assert new.keys() == old.keys()
    for k, v in new.items():
        if k != key and 'relative_position_bias_table' not in k:
            np.testing.assert_array_equal(v, old[k])
    assert new[key].shape != old[key].shape


def test_swin_loads_at_another_window():
    small = dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), img_size=32, num_classes=3)
    model = SwinTransformer(window_size=4, **small)
    other = SwinTransformer(window_size=8, **small)
    key = 'params/layers_0/blocks_0/attn/relative_position_bias_table'
    old, new = _reload(model, other)
    assert old[key].shape == (49, 1) and new[key].shape == (225, 1)
    _check_resized(old, new, key)
    same = tree.flatten(weights.load(model, tree.unflatten(old), strict=True))
    assert all(np.array_equal(same[k], v) for k, v in old.items())


@pytest.mark.slow
def test_sret_loads_at_another_resolution():
    small = dict(base_dims=(4, 4), heads=(1, 2), depth=(1, 1), recursive_num=(1, 1),
                 groups1=(1, 1), groups2=(1, 1), num_classes=3)
    model, other = SReT(img_size=64, **small), SReT(img_size=128, **small)
    key = 'params/pos_embed/pos_embedding'
    old, new = _reload(model, other)
    assert old[key].shape == (1, 64, 4) and new[key].shape == (1, 256, 4)
    _check_resized(old, new, key)
    same = tree.flatten(weights.load(model, tree.unflatten(old), strict=True))
    assert all(np.array_equal(same[k], v) for k, v in old.items())


@pytest.mark.slow
def test_dhvt_with_a_position_embedding_loads_at_another_resolution():
    small = dict(embed_dim=8, depth=1, num_heads=2, patch_size=4, num_classes=3, sope=False)
    model, other = DHVT(img_size=16, **small), DHVT(img_size=32, **small)
    key = 'params/pos_embed/pos_embedding'
    old, new = _reload(model, other)
    assert old[key].shape == (1, 17, 8) and new[key].shape == (1, 65, 8)
    np.testing.assert_array_equal(new[key][:, 0], old[key][:, 0])  # the class token's entry
    _check_resized(old, new, key)
