"""Hugging Face `transformers` checkpoints: ViT (with and without pooler), DeiT (its three
classes), Swin and ConvNeXt state dicts in both spellings (the hub files' and transformers 5's
in-memory names), as a state dict, `.bin`, `.safetensors` or a `save_pretrained` directory whose
config picks the model, give the logits of `transformers`; `save_hf` writes ViT, DeiT, Swin and
ConvNeXt directories that `transformers` reads back."""

import jax
import numpy as np
import pytest
import torch
import torch_reference

import vit_jax
from vit_jax import weights
from vit_jax.errors import ModelError
from vit_jax.models import convert, convnext, swin, vit

TOL = 1e-4
SIZE = 32


def reduced(transformers, kind, head=True):
    """A reduced `transformers` model of `kind` with random weights (every constant perturbed)."""
    t = transformers
    torch.manual_seed(0)
    if kind == 'vit':
        config = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, image_size=SIZE, patch_size=8, num_labels=5)
        model = t.ViTForImageClassification(config) if head else t.ViTModel(config)
    elif kind == 'vit_nopool':
        config = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, image_size=SIZE, patch_size=8)
        model = t.ViTModel(config, add_pooling_layer=False)
    elif kind in ('deit', 'deit_teacher'):
        config = t.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, image_size=SIZE, patch_size=8, num_labels=5)
        model = (t.DeiTForImageClassificationWithTeacher(config) if kind == 'deit_teacher' else
                 t.DeiTForImageClassification(config) if head else t.DeiTModel(config))
    elif kind == 'swin':
        config = t.SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8, depths=[2, 2, 1],
                              num_heads=[2, 2, 4], window_size=4, num_labels=5)
        model = t.SwinForImageClassification(config) if head else t.SwinModel(config)
    else:
        config = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 2],
                                  image_size=SIZE, num_labels=5)
        model = t.ConvNextForImageClassification(config) if head else t.ConvNextModel(config)
    torch_reference.randomize(model, scale=0.2)
    return model.eval()


def images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def hf_outputs(model, x):
    """Logits of a `*ForImageClassification`, the pooled output of a base model (the class
    token's final state when it has no pooler)."""
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    if hasattr(out, 'logits'):
        return out.logits.numpy()
    if out.pooler_output is not None:
        return out.pooler_output.reshape(len(x), -1).numpy()
    return out.last_hidden_state[:, 0].numpy()


def ours(model, variables, x):
    return np.asarray(model.apply(variables, x, train=False))


@pytest.mark.parametrize('kind,head', [('vit', True), ('vit', False), ('vit_nopool', False),
                                       ('deit', True), ('deit_teacher', True), ('deit', False),
                                       ('swin', True), ('swin', False), ('convnext', True)])
def test_directory_picks_the_model_and_gives_transformers_outputs(transformers, tmp_path, kind,
                                                                   head):
    reference = reduced(transformers, kind, head)
    reference.save_pretrained(tmp_path)  # the hub's array names
    model = weights.hf_model(tmp_path)
    variables = weights.load(model, tmp_path, strict=True)
    x = images()
    np.testing.assert_allclose(ours(model, variables, x), hf_outputs(reference, x), atol=TOL,
                               rtol=0)


def test_hf_model_carries_the_vit_options(transformers, tmp_path):
    reduced(transformers, 'vit').save_pretrained(tmp_path)
    model = weights.hf_model(tmp_path)
    assert isinstance(model, vit.VisionTransformer)
    assert (model.norm_eps, model.act_layer, model.num_classes, model.representation_size) == (
        1e-12, 'gelu', 5, None)
    reduced(transformers, 'vit', head=False).save_pretrained(tmp_path)
    assert weights.hf_model(tmp_path).representation_size == 32
    assert weights.hf_model(tmp_path).num_classes == 0


@pytest.mark.parametrize('kind', ['vit', 'deit', 'deit_teacher', 'swin', 'convnext'])
def test_in_memory_names_load(transformers, tmp_path, kind):
    """transformers 5's own parameter names (`vit.layers.N.attention.q_proj`) load too."""
    reference = reduced(transformers, kind)
    reference.save_pretrained(tmp_path)
    model = weights.hf_model(tmp_path)
    state = torch_reference.state_dict(reference)
    if kind != 'convnext':  # ConvNeXt's names are the same in memory and on the hub
        assert not (state.keys() & weights.read(tmp_path).keys()) >= state.keys()
    variables = weights.load(model, state, strict=True)
    x = images(1)
    np.testing.assert_allclose(ours(model, variables, x), hf_outputs(reference, x), atol=TOL,
                               rtol=0)


@pytest.mark.parametrize('kind', ['vit', 'deit_teacher'])
@pytest.mark.parametrize('fmt', ['bin', 'safetensors'])
def test_weight_files_load(transformers, tmp_path, fmt, kind):
    """The weights file alone, and a directory with `pytorch_model.bin` (older hub repos)."""
    reference = reduced(transformers, kind)
    reference.save_pretrained(tmp_path)
    model = weights.hf_model(tmp_path)
    name = 'model.safetensors'
    if fmt == 'bin':  # transformers 5 writes only safetensors; the hub names, as torch.save
        name = 'pytorch_model.bin'
        torch.save({k: torch.from_numpy(v) for k, v in weights.read(tmp_path).items()},
                   tmp_path / name)
        (tmp_path / 'model.safetensors').unlink()
    x = images()
    for source in (tmp_path / name, tmp_path):
        variables = weights.load(model, source, strict=True)
        np.testing.assert_allclose(ours(model, variables, x), hf_outputs(reference, x), atol=TOL,
                                   rtol=0)


def test_deit_options_and_both_heads_in_training(transformers, tmp_path):
    """DeiT always has a distillation token; only `...WithTeacher` reads it with a head of its
    own, and in training our model returns that class's `cls_logits` and
    `distillation_logits`."""
    expected = {('deit', True): (True, False, 5, None), ('deit', False): (True, False, 0, 32),
                ('deit_teacher', True): (True, True, 5, None)}
    for (kind, head), options in expected.items():
        reduced(transformers, kind, head).save_pretrained(tmp_path / f'{kind}{head}')
        model = weights.hf_model(tmp_path / f'{kind}{head}')
        assert (model.distilled, model.dist_head, model.num_classes,
                model.representation_size) == options
    reference = reduced(transformers, 'deit_teacher')
    model = weights.hf_model(tmp_path / 'deit_teacherTrue')
    variables = weights.load(model, tmp_path / 'deit_teacherTrue', strict=True)
    x = images(3)
    with torch.no_grad():
        out = reference(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    cls_logits, dist_logits = model.apply(variables, x, train=True)
    np.testing.assert_allclose(cls_logits, out.cls_logits.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(dist_logits, out.distillation_logits.numpy(), atol=TOL, rtol=0)


def test_families_register_their_model_types(transformers, tmp_path):
    for kind, module in (('swin', swin.SwinTransformer), ('convnext', convnext.ConvNeXt)):
        reduced(transformers, kind).save_pretrained(tmp_path / kind)
        assert type(weights.hf_model(tmp_path / kind)) is module


SAVED_CLASSES = {('vit', True): 'ViTForImageClassification', ('vit', False): 'ViTModel',
                 ('deit', True): 'DeiTForImageClassification', ('deit', False): 'DeiTModel',
                 ('deit_teacher', True): 'DeiTForImageClassificationWithTeacher',
                 ('swin', True): 'SwinForImageClassification', ('swin', False): 'SwinModel',
                 ('convnext', True): 'ConvNextForImageClassification',
                 ('convnext', False): 'ConvNextModel'}


@pytest.mark.parametrize('kind,head', list(SAVED_CLASSES))
def test_save_hf_is_read_back_by_transformers(transformers, tmp_path, kind, head):
    reference = reduced(transformers, kind, head)
    reference.save_pretrained(tmp_path / 'src')
    model = weights.hf_model(tmp_path / 'src')
    variables = weights.load(model, tmp_path / 'src', strict=True)
    weights.save_hf(model, variables, tmp_path / 'out')
    back, info = getattr(transformers, SAVED_CLASSES[kind, head]).from_pretrained(
        tmp_path / 'out', output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched arrays
    x = images(2)
    np.testing.assert_allclose(hf_outputs(back.eval(), x), ours(model, variables, x), atol=TOL,
                               rtol=0)
    # and the written directory builds the same model and loads the same variables
    assert weights.hf_model(tmp_path / 'out') == model
    again = weights.load(model, tmp_path / 'out', strict=True)
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_errors_name_what_is_wrong(transformers, tmp_path):
    with pytest.raises(ModelError, match='has no config.json'):
        weights.hf_model(tmp_path)
    with pytest.raises(ModelError, match='without Hugging Face weights'):
        weights.read(tmp_path)
    (tmp_path / 'config.json').write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match="'bert' model; vit_jax builds convnext, deit, swin, vit"):
        weights.hf_model(tmp_path)
    with pytest.raises(ModelError, match='ResNetV2 has no Hugging Face export; families with one: '
                                         'ConvNeXt, SwinTransformer, VisionTransformer$'):
        weights.save_hf(vit_jax.create_model('BiT-R50x1'), {}, tmp_path / 'out')
    wide = convnext.ConvNeXt(img_size=SIZE, depths=(1, 1), dims=(8, 16), kernel_size=5)
    with pytest.raises(ModelError, match="Hugging Face's ConvNeXt has 7x7 depthwise convolutions"):
        weights.save_hf(wide, {}, tmp_path / 'out')


def test_a_deit_checkpoint_needs_a_distilled_model(transformers, tmp_path):
    reduced(transformers, 'deit').save_pretrained(tmp_path)
    plain = vit.VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                  mlp_ratio=2.0, num_classes=5)
    with pytest.raises(ModelError, match='is a distilled DeiT .* create the model with '
                                         'distilled=True'):
        weights.load(plain, tmp_path)
    averaging = plain.clone(num_classes=0, distilled=True)
    with pytest.raises(ModelError, match="DeiTModel returns the class token alone"):
        weights.save_hf(averaging, weights.load(averaging, tmp_path), tmp_path / 'out')


def test_invert_undoes_reading_rules():
    rules = ((r'^encoder\.(layer|layers)\.(\d+)\.', r'blocks.\2.'), (r'\.fc(\d)$', r'.mlp\1'))
    names = {'encoder.layer.3.fc2': 0, 'encoder.layers.0.fc1': 1}
    read = convert.rename(names, rules)
    assert read == {'blocks.3.mlp2': 0, 'blocks.0.mlp1': 1}
    assert convert.rename(read, convert.invert(rules)) == {'encoder.layer.3.fc2': 0,
                                                           'encoder.layer.0.fc1': 1}
    for rule in ((r'a.*', 'b'), (r'a(\d)', 'b')):  # a wildcard; a group the replacement drops
        with pytest.raises(ValueError, match='cannot invert the rule'):
            convert.invert((rule,))
