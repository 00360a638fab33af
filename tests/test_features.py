"""`vit_jax.features`: pooled pre-logits and intermediate maps equal to timm's
`forward_intermediates` (ViT, scanned ViT, Swin, ConvNeXt; with and without the final norm;
layer selection), and every family gives one map per block or stage with `num_classes=0` as
its backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference

import vit_jax
from vit_jax import weights
from vit_jax.errors import ModelError

TOL = 1e-4
SIZE = 32
# name: (timm name, our name, options for both, number of maps)
CASES = {
    'vit': ('vit_small_patch16_224', 'ViT-S_16',
            dict(img_size=SIZE, patch_size=8, embed_dim=32, depth=3, num_heads=2), 3),
    'swin': ('swin_tiny_patch4_window7_224', 'swin_tiny_patch4_window7_224',
             dict(img_size=SIZE, patch_size=2, window_size=4, embed_dim=8, depths=(2, 2, 1),
                  num_heads=(2, 2, 4)), 3),
    'convnext': ('convnext_tiny', 'convnext_tiny',
                 dict(dims=(8, 16, 24, 32), depths=(1, 1, 2, 1)), 4),
}
TIMM_ONLY = {'vit': dict(act_layer='gelu_tanh')}


@pytest.fixture(scope='module')
def loaded(timm):
    out = {}
    for case, (timm_name, name, options, _) in CASES.items():
        torch.manual_seed(0)
        reference = timm.create_model(timm_name, pretrained=False, num_classes=5, **options,
                                      **TIMM_ONLY.get(case, {})).eval()
        state = torch_reference.randomize(reference, scale=0.2)
        model = vit_jax.create_model(name, num_classes=5, **{'img_size': SIZE, **options})
        out[case] = reference, model, weights.load(model, state, strict=True)
    return out


def images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def timm_features(reference, x, indices, norm):
    with torch.no_grad():
        final, maps = reference.forward_intermediates(
            torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), indices=indices, norm=norm)
        pooled = reference.forward_head(final, pre_logits=True)
    return pooled.numpy(), [m.numpy().transpose(0, 2, 3, 1) for m in maps]


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('layers,norm', [(None, False), (None, True), (2, True),
                                         ([0, -1], False)])
def test_equal_to_timms_forward_intermediates(loaded, case, layers, norm):
    reference, model, variables = loaded[case]
    x = images()
    pooled, maps = vit_jax.features(model, variables, x, layers=layers, norm=norm)
    want_pooled, want_maps = timm_features(reference, x, layers, norm)
    np.testing.assert_allclose(pooled, want_pooled, atol=TOL, rtol=0)
    assert len(maps) == len(want_maps)
    for got, want in zip(maps, want_maps, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_scanned_vit_gives_the_same_features(loaded):
    _, model, variables = loaded['vit']
    scanned = model.clone(scan_layers=True)
    stacked = weights.load(scanned, jax.tree.map(np.asarray, variables))
    x = images(1)
    pooled, maps = vit_jax.features(model, variables, x, norm=True)
    pooled_s, maps_s = vit_jax.features(scanned, stacked, x, norm=True)
    np.testing.assert_allclose(pooled_s, pooled, atol=1e-5, rtol=0)
    for a, b in zip(maps_s, maps, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# One small variant per family (the hybrid too): name, options, number of maps, their widths.
FAMILIES = {
    'ViT-Ti_16': (dict(img_size=64, depth=2), [192] * 2),
    'ViT-Ti_16-gap-norep': (dict(img_size=64, depth=2), [192] * 2),
    'R+ViT-Ti_16': (dict(img_size=64, depth=2), [192] * 2),
    'BiT-R50x1': (dict(), [256, 512, 1024, 2048]),
    'swin_tiny_patch4_window7_224': (dict(), [96, 192, 384, 768]),
    'convnext_tiny': (dict(img_size=64), [96, 192, 384, 768]),
    'dhvt_tiny_cifar_patch4': (dict(depth=3), [192] * 3),
    'SReT_T': (dict(), None),
}


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_every_family_gives_maps_and_a_backbone(name):
    options, widths = FAMILIES[name]
    model = vit_jax.create_model(name, **options)
    x = jax.ShapeDtypeStruct((2, model.img_size, model.img_size, model.in_chans), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    pooled, maps = jax.eval_shape(
        lambda v, x: vit_jax.features(model, v, x, norm=True), variables, x)
    backbone = model.clone(num_classes=0)
    assert pooled.shape == jax.eval_shape(backbone.apply, variables, x).shape
    if widths is None:  # SReT: one map per recursive block, stages 4x4 at 1/4, 1/8, 1/16
        widths = [m.shape[-1] for m in maps]
        assert len(maps) == sum(model.depth)
    assert [m.shape[-1] for m in maps] == widths
    for m in maps:
        assert m.ndim == 4 and m.shape[0] == 2 and m.shape[1] == m.shape[2] > 1


def test_layer_selection_errors_say_the_range(loaded):
    _, model, variables = loaded['vit']
    with pytest.raises(ModelError, match='has 3 feature layers; ask for 1 to 3'):
        vit_jax.features(model, variables, images(), layers=4)
    with pytest.raises(ModelError, match=r'layers \[3\] out of range'):
        vit_jax.features(model, variables, images(), layers=[0, 3])
