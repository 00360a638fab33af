"""Weight import and export: timm, the original `.npz` and big_vision layouts give the logits of
the code they came from; position-embedding resize; head re-initialisation; file formats; errors."""

import logging

import jax
import numpy as np
import pytest
import torch
import torch_reference

import vit_jax
from vit_jax import tree, weights
from vit_jax.errors import ModelError

TOL = 1e-4


def images(size, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def ours(model, variables, x):
    return np.asarray(model.apply(variables, x, train=False))


def timm_case(timm, timm_name, our_name, size, **kwargs):
    """A timm model with random weights, and ours loaded from its state dict."""
    torch.manual_seed(0)
    if 'bit' in timm_name:
        reference = timm.create_model(timm_name, pretrained=False, **kwargs)
    elif 'deit' in timm_name:  # exact GELU, as DeiT
        reference = timm.create_model(timm_name, pretrained=False, img_size=size, num_classes=1000,
                                      **kwargs)
    else:  # the original ViT's tanh GELU
        reference = timm.create_model(timm_name, pretrained=False, img_size=size, num_classes=1000,
                                      act_layer='gelu_tanh', **kwargs)
    with torch.no_grad():  # constant inits (norms, biases, zero-init convs) would hide mix-ups
        for p in reference.parameters():
            if p.min() == p.max():
                p.add_(torch.randn_like(p) * 0.05)
    model = vit_jax.create_model(our_name, img_size=size, **kwargs)
    return reference, model, weights.load(model, torch_reference.state_dict(reference), strict=True)


CASES = {  # name: (timm name, our name, image size, overrides)
    'vit_tiny_patch16': ('vit_tiny_patch16_224', 'ViT-Ti_16', 224, {}),
    'vit_small_patch32': ('vit_small_patch32_224', 'ViT-S_32', 224, {'depth': 3}),
    'r50_vit_base_patch16': ('vit_base_r50_s16_224', 'R50+ViT-B_16', 224, {'depth': 2}),
    'bit_r50x1': ('resnetv2_50x1_bit', 'BiT-R50x1', 128, {}),
    'deit_tiny_distilled': ('deit_tiny_distilled_patch16_224', 'deit_tiny_distilled_patch16_224',
                            224, {'depth': 2}),
}


@pytest.fixture(scope='module')
def loaded(timm):
    """Each case's timm model, our model and the variables loaded from timm's state dict."""
    return {case: timm_case(timm, t, o, size, **kw) for case, (t, o, size, kw) in CASES.items()}


@pytest.mark.parametrize('case,scan', [(case, False) for case in sorted(CASES)] + [
    ('vit_small_patch32', True), ('r50_vit_base_patch16', True), ('deit_tiny_distilled', True)])
def test_logits_equal_timm(loaded, case, scan):
    reference, model, variables = loaded[case]
    if scan:  # blocks as one nn.scan: the state dict loads into stacked parameters
        model = model.clone(scan_layers=True)
        variables = weights.load(model, torch_reference.state_dict(reference), strict=True)
        assert variables['params']['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape[
            0] == model.depth
    x = images(CASES[case][2])
    expected = torch_reference.logits(reference, x)
    got = ours(model, variables, x)
    assert np.abs(expected).max() > 0.1  # random heads: the comparison is not of zeros
    assert np.abs(got - expected).max() <= TOL


def test_distilled_heads_equal_timms_in_training(loaded):
    """In training the distilled DeiT returns both heads' logits, as timm's with
    `set_distilled_training(True)`; in evaluation (above) their average."""
    reference, model, variables = loaded['deit_tiny_distilled']
    x = images(224, seed=2)
    reference.set_distilled_training(True)
    reference.train()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    got = model.apply(variables, x, train=True)
    assert len(got) == len(expected) == 2
    for theirs, mine in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(mine), theirs.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(ours(model, variables, x), (got[0] + got[1]) / 2, atol=1e-6)


@pytest.mark.parametrize('case', ['vit_tiny_patch16', 'r50_vit_base_patch16'])
def test_save_npz_is_read_by_timms_reader_of_the_original_format(loaded, timm, tmp_path, case):
    from timm.models.vision_transformer import _load_weights

    reference, model, variables = loaded[case]
    path = tmp_path / 'original.npz'
    weights.save_npz(variables, path)
    with np.load(path) as f:
        assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' in f.files
    fresh = timm_case(timm, *CASES[case][:3], **CASES[case][3])[0]
    torch.manual_seed(1)
    for p in fresh.parameters():
        torch.nn.init.normal_(p)  # nothing of the original weights is left in it
    with torch.no_grad():
        _load_weights(fresh, str(path))
    x = images(CASES[case][2], seed=1)
    np.testing.assert_allclose(torch_reference.logits(fresh, x), ours(model, variables, x),
                               atol=TOL, rtol=0)
    # ... and our reader takes the same file back unchanged.
    again = weights.load(model, path, strict=True)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, jax.device_get(variables)))


def to_big_vision(variables, scanned):
    """Writes ViT variables in big_vision's layout (what its checkpoints hold)."""
    names = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
             'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}
    flat = tree.flatten(jax.device_get(variables))
    out, blocks = {}, {}
    for key, value in flat.items():
        key = key.removeprefix('params/')
        if key == 'Transformer/posembed_input/pos_embedding':
            out['params/pos_embedding'] = value
        elif key.startswith('Transformer/encoderblock_'):
            _, block, module, rest = key.split('/', 3)
            module = names.get(module, module)
            if scanned:
                blocks.setdefault(f'params/Transformer/encoderblock/{module}/{rest}', []).append(
                    (int(block.split('_')[1]), value))
            else:
                out[f'params/Transformer/{block}/{module}/{rest}'] = value
        else:
            out[f'params/{key}'] = value
    for key, layers in blocks.items():
        out[key] = np.stack([v for _, v in sorted(layers, key=lambda t: t[0])])
    return out


@pytest.mark.parametrize('scanned', [True, False])
def test_big_vision_layout_loads_to_the_same_logits(loaded, tmp_path, scanned):
    reference, model, variables = loaded['vit_small_patch32']
    path = tmp_path / 'big_vision.npz'
    np.savez(path, **to_big_vision(variables, scanned))
    x = images(224, seed=2)
    got = ours(model, weights.load(model, path, strict=True), x)
    np.testing.assert_allclose(got, torch_reference.logits(reference, x), atol=TOL, rtol=0)


@pytest.mark.parametrize('fmt', ['pth', 'bin', 'safetensors', 'nested'])
def test_pytorch_file_formats(loaded, tmp_path, fmt):
    from safetensors.torch import save_file

    reference, model, variables = loaded['vit_tiny_patch16']
    sd = reference.state_dict()
    path = tmp_path / f'weights.{fmt}'
    if fmt == 'safetensors':
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    elif fmt == 'nested':  # as training scripts save: {'model': state_dict} with DataParallel names
        torch.save({'model': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 3}, path)
    else:
        torch.save(sd, path)
    again = weights.load(model, path, strict=True)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, jax.device_get(variables)))


def test_position_embedding_resized_for_another_resolution(loaded):
    _, model, variables = loaded['vit_tiny_patch16']
    large = vit_jax.create_model('ViT-Ti_16', img_size=384)
    resized = weights.load(large, variables)
    old = variables['params']['Transformer']['posembed_input']['pos_embedding']
    new = resized['params']['Transformer']['posembed_input']['pos_embedding']
    assert new.shape == (1, 1 + 24 * 24, 192)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # the class token's entry is kept
    grid_old, grid_new = old[0, 1:].reshape(14, 14, -1), new[0, 1:].reshape(24, 24, -1)
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # linear zoom keeps the corners
        np.testing.assert_allclose(grid_new[corner], grid_old[corner], atol=1e-6)
    assert np.isfinite(ours(large, resized, images(384, batch=1))).all()
    same = weights.load(model, variables)
    np.testing.assert_array_equal(same['params']['Transformer']['posembed_input']['pos_embedding'],
                                  old)


def test_other_class_count_reinitialises_the_head(loaded, caplog):
    _, _, variables = loaded['vit_tiny_patch16']
    model = vit_jax.create_model('ViT-Ti_16', num_classes=10)
    with caplog.at_level(logging.INFO, logger='vit_jax.weights'):
        fine_tune = weights.load(model, variables)
    assert ('re-initialised params/head/bias, params/head/kernel (the checkpoint has another '
            'class count)') in caplog.text
    assert fine_tune['params']['head']['kernel'].shape == (192, 10)
    assert not fine_tune['params']['head']['kernel'].any()  # the model's own (zero) init
    np.testing.assert_array_equal(fine_tune['params']['embedding']['kernel'],
                                  variables['params']['embedding']['kernel'])
    with pytest.raises(ModelError, match=r'head/bias has shape \(1000,\) in the checkpoint but '
                                         r'\(10,\) in the VisionTransformer; load with '
                                         r'strict=False'):
        weights.load(model, variables, strict=True)


def test_errors_name_what_is_wrong(loaded, tmp_path):
    _, model, variables = loaded['vit_tiny_patch16']
    text = tmp_path / 'notes.txt'
    text.write_text('not weights')
    with pytest.raises(ModelError, match=r"notes.txt' is not a checkpoint vit_jax can read"):
        weights.load(model, text)
    corrupt = tmp_path / 'corrupt.npz'
    corrupt.write_bytes(b'PK\x03\x04' + b'\0' * 64)
    with pytest.raises(ModelError, match='is not a checkpoint vit_jax can read'):
        weights.load(model, corrupt)
    with pytest.raises(ModelError, match='does not exist'):
        weights.load(model, tmp_path / 'missing.npz')
    with pytest.raises(ModelError, match=r'params/Transformer/encoder_norm/bias has shape \(192,\) '
                                         r'in the checkpoint but \(384,\) in the '
                                         r'VisionTransformer; it was saved from another model'):
        weights.load(vit_jax.create_model('ViT-S_16'), variables)
    bit = loaded['bit_r50x1'][0]
    with pytest.raises(ModelError, match=r'not a VisionTransformer checkpoint in a layout'):
        weights.load(model, torch_reference.state_dict(bit))
    partial = {k: v for k, v in tree.flatten(variables).items()
               if 'encoderblock_11' not in k}
    with pytest.raises(ModelError, match=r'lacks 16 of the VisionTransformer arrays, first '
                                         r"'params/Transformer/encoderblock_11/LayerNorm_0/bias'"):
        weights.load(model, partial)
    extra = {**tree.flatten(variables), 'params/extra/kernel': np.zeros(3)}
    with pytest.raises(ModelError, match=r"1 arrays the VisionTransformer does not use, first "
                                         r"'params/extra/kernel'"):
        weights.load(model, extra, strict=True)
