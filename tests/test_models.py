"""ViT models: exact parameter counts, the original parameter tree, every option's forward
pass, fused vs explicit attention, the registry and its errors."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_jax
from vit_jax.errors import ModelError
from vit_jax.models import layers


def count_params(model, size=224):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return sum(x.size for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name', [n for n in vit_jax.list_models('ViT-*-gap-norep')])
def test_gap_variants_drop_class_token_and_its_position(name):
    token = vit_jax.create_model(name.replace('-gap-norep', ''))
    width = token.embed_dim
    assert count_params(vit_jax.create_model(name)) == count_params(token) - 2 * width


def test_vit_names():
    assert len(vit_jax.list_models('ViT-*')) == 23  # the zoo's 18, ViT-digits, the 4 big ViTs
    assert vit_jax.list_models('ViT-B_*') == ['ViT-B_16', 'ViT-B_16-gap-norep', 'ViT-B_32',
                                               'ViT-B_32-gap-norep', 'ViT-B_8',
                                               'ViT-B_8-gap-norep']


def test_original_parameter_tree():
    model = vit_jax.create_model('testing', num_classes=5, img_size=32, representation_size=7)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    paths = {jax.tree_util.keystr(p, simple=True, separator='/'): x.shape
             for p, x in jax.tree_util.tree_leaves_with_path(params)}
    block = 'Transformer/encoderblock_0/'
    expected = {
        'embedding/kernel': (16, 16, 3, 10), 'embedding/bias': (10,), 'cls': (1, 1, 10),
        'Transformer/posembed_input/pos_embedding': (1, 5, 10),
        block + 'LayerNorm_0/scale': (10,), block + 'LayerNorm_0/bias': (10,),
        block + 'MultiHeadDotProductAttention_1/query/kernel': (10, 2, 5),
        block + 'MultiHeadDotProductAttention_1/query/bias': (2, 5),
        block + 'MultiHeadDotProductAttention_1/key/kernel': (10, 2, 5),
        block + 'MultiHeadDotProductAttention_1/key/bias': (2, 5),
        block + 'MultiHeadDotProductAttention_1/value/kernel': (10, 2, 5),
        block + 'MultiHeadDotProductAttention_1/value/bias': (2, 5),
        block + 'MultiHeadDotProductAttention_1/out/kernel': (2, 5, 10),
        block + 'MultiHeadDotProductAttention_1/out/bias': (10,),
        block + 'LayerNorm_2/scale': (10,), block + 'LayerNorm_2/bias': (10,),
        block + 'MlpBlock_3/Dense_0/kernel': (10, 10), block + 'MlpBlock_3/Dense_0/bias': (10,),
        block + 'MlpBlock_3/Dense_1/kernel': (10, 10), block + 'MlpBlock_3/Dense_1/bias': (10,),
        'Transformer/encoder_norm/scale': (10,), 'Transformer/encoder_norm/bias': (10,),
        'pre_logits/kernel': (10, 7), 'pre_logits/bias': (7,),
        'head/kernel': (7, 5), 'head/bias': (5,),
    }
    assert paths == expected


def small(**overrides):
    options = dict(num_classes=3, img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    return vit_jax.create_model('testing', **{**options, **overrides})


def run(model, train=False, batch=2, size=32, seed=0):
    images = jax.random.normal(jax.random.key(seed), (batch, size, size, 3))
    variables = model.init(jax.random.key(1), images)
    rngs = {'dropout': jax.random.key(2)} if train else None
    return model.apply(variables, images, train=train, rngs=rngs), variables


@pytest.mark.parametrize('overrides', [
    dict(classifier='token'), dict(classifier='gap'),
    dict(pos_embed='learned'), dict(pos_embed='sincos1d'), dict(pos_embed='sincos2d'),
    dict(pos_embed='none'),
    dict(patch_kernel_size=12, patch_padding=2),
    dict(representation_size=12), dict(act_layer='gelu'), dict(attn_impl='explicit'),
    dict(depth=3, embed_dim=24, num_heads=3, mlp_ratio=2.5),
])
@pytest.mark.parametrize('train', [False, True])
def test_forward_shapes(overrides, train):
    model = small(**overrides, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1)
    logits, _ = run(model, train=train)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_overlapping_patch_grid_matches_original_224():
    overlap = vit_jax.create_model('ViT-B_16', patch_kernel_size=20, patch_padding=2)
    assert overlap.grid == (14, 14)
    # Same tokens, bigger kernel: only the embedding kernel grows (20*20 vs 16*16 per filter).
    extra = (20 * 20 - 16 * 16) * 3 * 768
    assert count_params(overlap) == count_params(vit_jax.create_model('ViT-B_16')) + extra


def test_bfloat16_compute_keeps_float32_params():
    model32 = small(pos_embed='sincos2d')
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = random_head(model32.init(jax.random.key(1), images))
    logits32 = model32.apply(variables, images)
    model16 = small(pos_embed='sincos2d', dtype='bfloat16')
    params16 = model16.init(jax.random.key(1), images)['params']
    assert jax.tree.map(jnp.shape, params16) == jax.tree.map(jnp.shape, variables['params'])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
    logits16 = model16.apply(variables, images)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.1)
    assert not np.array_equal(logits16, logits32)  # really computed in bfloat16


def test_dropout_changes_outputs_only_in_training():
    model = small(drop_rate=0.3, drop_path_rate=0.3)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = random_head(model.init(jax.random.key(1), images))
    eval1 = model.apply(variables, images)
    np.testing.assert_array_equal(eval1, model.apply(variables, images))
    train = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
    assert not np.allclose(train, eval1)


def test_head_starts_at_zero_and_gelu_is_tanh_by_default():
    logits, _ = run(small())
    np.testing.assert_array_equal(logits, 0.0)  # zero-initialised head, as the original
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(layers.get_activation('gelu_tanh')(x),
                               jax.nn.gelu(x, approximate=True))
    assert not np.allclose(layers.get_activation('gelu')(x), jax.nn.gelu(x, approximate=True))


def random_head(variables):
    """Replaces the zero head so that logits depend on everything before it."""
    params = dict(variables['params'])
    params['head'] = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape),
                                  params['head'])
    return {'params': params}


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_fused_and_explicit_attention_agree(classifier):
    fused = small(classifier=classifier, attn_impl='fused')
    explicit = small(classifier=classifier, attn_impl='explicit')
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = random_head(fused.init(jax.random.key(1), images))
    shapes = jax.tree.map(jnp.shape, explicit.init(jax.random.key(1), images))
    assert shapes == jax.tree.map(jnp.shape, variables)  # the same parameters
    a = fused.apply(variables, images)
    b = explicit.apply(variables, images)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(a)).max() > 0.1


def test_explicit_attention_returns_weights():
    model = small(attn_impl='explicit')
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), images)
    _, state = model.apply(variables, images, mutable=['intermediates'])
    weights = state['intermediates']['Transformer']['encoderblock_1'][
        'MultiHeadDotProductAttention_1']['attention_weights'][0]
    assert weights.shape == (2, 2, 17, 17)  # [batch, heads, 1 + 4*4 tokens, tokens]
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_attention_bias_and_mask_agree_between_paths():
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    bias = jax.random.normal(jax.random.key(1), (1, 2, 6, 6))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    outs = []
    for impl in layers.ATTENTION_IMPLS:
        attn = layers.MultiHeadAttention(num_heads=2, impl=impl)
        variables = attn.init(jax.random.key(2), x)
        outs.append(attn.apply(variables, x, bias=bias, mask=mask))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize('q_tokens, k_tokens', [(197, 197), (17, 33), (32, 32)])
def test_padded_attention_equals_attention_over_the_true_tokens(q_tokens, k_tokens):
    # The padding cuDNN gets (to multiples of 16, true lengths passed), here through XLA's
    # implementation: the padded keys get no weight, the padded queries reach no output.
    q, k, v = (jax.random.normal(jax.random.key(i), (2, n, 3, 8))
               for i, n in enumerate((q_tokens, k_tokens, k_tokens)))
    cotangent = jax.random.normal(jax.random.key(3), q.shape)

    def loss(attention):
        return lambda q, k, v: (attention(q, k, v) * cotangent).sum()

    padded = functools.partial(layers.padded_attention, implementation='xla')
    np.testing.assert_allclose(padded(q, k, v), jax.nn.dot_product_attention(q, k, v),
                               atol=1e-6)
    grads = jax.grad(loss(padded), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for grad, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(grad, want, atol=1e-5)


def test_drop_path_drops_whole_examples_and_keeps_expectation():
    x = jnp.ones((20_000, 3))
    y = layers.DropPath(0.25).apply({}, x, deterministic=False,
                                    rngs={'dropout': jax.random.key(0)})
    kept = np.asarray(y[:, 0] != 0)
    assert np.all(y[kept] == 1 / 0.75) and np.all(y[~kept] == 0)
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(layers.DropPath(0.25).apply({}, x, deterministic=True), x)


def test_sincos_embeddings():
    pe = layers.sincos_2d(3, 4, 8)
    assert pe.shape == (1, 12, 8)
    np.testing.assert_allclose(pe[0, 0], [0, 0, 1, 1, 0, 0, 1, 1])  # position (0, 0)
    np.testing.assert_allclose(pe[0, 1, :2], [np.sin(1), np.sin(1e-2)], rtol=1e-6)  # x = 1
    np.testing.assert_allclose(pe[0, 4, 4:6], [np.sin(1), np.sin(1e-2)], rtol=1e-6)  # y = 1
    assert len({tuple(np.round(r, 6)) for r in pe[0]}) == 12  # all positions distinct
    pe1 = layers.sincos_1d(5, 6)
    np.testing.assert_allclose(pe1[0, 2], np.concatenate([np.sin(2 * 1e4 ** -(np.arange(3) / 3)),
                                                          np.cos(2 * 1e4 ** -(np.arange(3) / 3))]),
                               rtol=1e-6)


def test_sincos_model_accepts_other_sizes_learned_does_not():
    model = small(pos_embed='sincos2d')
    logits, variables = run(model, size=48)
    assert logits.shape == (2, 3)
    with pytest.raises(ModelError, match='img_size=48'):
        run(small(pos_embed='learned'), size=48)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ModelError, match="unknown model 'ViT-B16'; did you mean ViT-B_16"):
        vit_jax.create_model('ViT-B16')


def test_unknown_option_names_the_close_option():
    with pytest.raises(ModelError, match="no option 'embed_dims'; did you mean 'embed_dim'"):
        vit_jax.create_model('ViT-B_16', embed_dims=10)


@pytest.mark.parametrize('overrides, message', [
    (dict(img_size=230), 'img_size=230 does not fit patch_size=16.*use img_size=224 or 240'),
    (dict(classifier='cls'), "classifier='cls' is not supported"),
    (dict(pos_embed='rope'), "pos_embed='rope' is not supported"),
    (dict(num_heads=5), 'embed_dim=768 is not divisible by num_heads=5'),
    (dict(dtype='float64'), "dtype='float64' is not supported"),
])
def test_bad_options_are_clear_errors(overrides, message):
    with pytest.raises(ModelError, match=message):
        vit_jax.create_model('ViT-B_16', **overrides)


def test_wrong_channel_count_is_a_clear_error():
    model = small()
    with pytest.raises(ModelError, match=r'expected images \[batch, height, width, 3\], got '
                                         r'shape \(2, 32, 32, 1\)'):
        model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)))


def test_image_size_not_divisible_by_patch_is_a_clear_error():
    model = small(pos_embed='none')
    with pytest.raises(ModelError, match='image size 30 does not fit patch size 8'):
        model.init(jax.random.key(0), jnp.zeros((2, 30, 30, 3)))


def test_model_and_train_import_without_tensorflow():
    code = ('import sys, vit_jax, vit_jax.models, vit_jax.train, vit_jax.config, vit_jax.data; '
            'assert "tensorflow" not in sys.modules, "tensorflow was imported"; '
            'print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_hybrid_image_size_error_names_sizes_that_work():
    with pytest.raises(ModelError, match=r'img_size=200 does not fit the ResNet stride 16 and '
                                         r'patch_size=1 .*use img_size=192 or 208'):
        vit_jax.create_model('R50+ViT-B_16', img_size=200)
    model = vit_jax.create_model('R+ViT-Ti_16', img_size=64, num_classes=3, depth=1)
    x = jnp.zeros((2, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (2, 3)
    assert model.grid == (2, 2)


def test_the_remat_policy_keeps_matmuls_and_1x1_convolutions_only():
    """`layers.save_matmuls` keeps the Dense layers' and 1x1 convolutions' outputs (DHVT's
    DAFF) for the backward pass and recomputes depthwise convolutions, batched matmuls (XLA's
    attention) and the elementwise rest."""
    def step(x, dense, pointwise, depthwise):
        y = jnp.tanh(x @ dense)  # [batch, h, w, c] @ [c, c]
        conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1),
                                 padding='SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        y = conv(y, pointwise)
        y = conv(y, depthwise, feature_group_count=y.shape[-1])
        scores = jnp.einsum('bqc,bkc->bqk', y.reshape(2, -1, 4), y.reshape(2, -1, 4))
        return scores.sum()

    args = [jnp.ones((2, 3, 3, 4)), jnp.ones((4, 4)), jnp.ones((1, 1, 4, 4)),
            jnp.ones((3, 3, 1, 4))]
    eqns = jax.make_jaxpr(step)(*args).eqns
    kinds = [e.primitive.name for e in eqns]
    saved = [e.primitive.name for e in eqns
             if layers.save_matmuls(e.primitive, *(v.aval for v in e.invars), **e.params)]
    assert kinds.count('conv_general_dilated') == 2 and kinds.count('dot_general') == 2
    assert saved == ['dot_general', 'conv_general_dilated']  # the Dense, the 1x1 convolution
