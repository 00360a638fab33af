"""Analysis tools: attention distance, rollout, position-embedding similarity and filter PCA
against values worked out by hand or by scikit-learn; the command line end to end on a trained
workdir and on a weights file."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA

import vit_jax
from vit_jax import analysis, weights
from vit_jax.analysis import run
from vit_jax.errors import ModelError
from vit_jax.models import layers
from vit_jax.train.workdir import Workdir


def test_mean_attention_distance_by_hand():
    # 2x2 grid, 8 px patches, one class token. Head 0 attends to itself, head 1 to the patch
    # on its right/left (8 px), head 2 uniformly over the patches: (0 + 8 + 8 + 8 sqrt 2) / 4.
    t = 5
    w = np.zeros((1, 3, t, t), np.float32)
    w[0, 0, 1:, 1:] = np.eye(4)
    w[0, 1, 1:, 1:] = np.eye(4)[[1, 0, 3, 2]]
    w[0, 2, 1:, 1:] = 0.2  # renormalised over the patches: the class-token column is left out
    w[:, :, :, 0] = 1.0 - w.sum(-1)
    distance = analysis.mean_attention_distance([w, w[:, ::-1]], (2, 2), 8, 1)
    uniform = (0 + 8 + 8 + 8 * np.sqrt(2)) / 4
    np.testing.assert_allclose(distance, [[0, 8, uniform], [uniform, 8, 0]], rtol=1e-6)


def test_rollout_multiplies_head_means_with_the_residual():
    rng = np.random.default_rng(0)
    ws = [rng.dirichlet(np.ones(6), size=(2, 3, 6)).astype(np.float32) for _ in range(3)]
    expected = np.eye(6)
    for w in ws:
        a = 0.5 * np.eye(6) + 0.5 * w.mean(1)
        expected = (a / a.sum(-1, keepdims=True)) @ expected
    np.testing.assert_allclose(analysis.rollout(ws), expected, rtol=1e-5)
    np.testing.assert_allclose(analysis.rollout(ws[:1], residual=0.0), ws[0].mean(1), rtol=1e-6)
    maps = analysis.attention_maps(ws, (1, 5), num_prefix_tokens=1)
    assert maps['rollout'].shape == (2, 1, 5) and maps['last_layer'].shape == (2, 3, 1, 5)
    np.testing.assert_allclose(maps['rollout'].max(axis=(-2, -1)), 1.0)
    last = ws[-1][:, :, 0, 1:]
    np.testing.assert_allclose(maps['last_layer'][:, :, 0], last / last.max(-1, keepdims=True),
                               rtol=1e-6)


def test_attention_weights_come_in_block_order():
    model = vit_jax.create_model('testing', num_classes=3, img_size=16, patch_size=4, depth=11)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = model.init(jax.random.key(0), images)
    ws = analysis.attention_weights(model, variables, images)  # the model is fused: cloned
    assert len(ws) == 11 and ws[0].shape == (2, 2, 17, 17)
    np.testing.assert_allclose(np.asarray(ws[4]).sum(-1), 1.0, rtol=1e-5)
    _, state = model.clone(attn_impl='explicit').apply(variables, images,
                                                       mutable=['intermediates'])
    blocks = state['intermediates']['Transformer']
    for i in (2, 9, 10):  # 'encoderblock_10' sorts after 'encoderblock_9'
        expected = blocks[f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
        np.testing.assert_array_equal(ws[i], expected['attention_weights'][0])
    with pytest.raises(ModelError, match='prefix tokens'):
        analysis.mean_attention_distance(ws, (3, 3), 4, 1)


def test_position_similarity_of_sincos_and_learned_embeddings():
    pe = layers.sincos_2d(5, 5, 64)[0]
    sim = analysis.position_similarity(pe, (5, 5))
    assert sim.shape == (5, 5, 5, 5)
    np.testing.assert_allclose(sim[2, 3, 2, 3], 1.0, rtol=1e-6)
    np.testing.assert_allclose(sim.reshape(25, 25), sim.reshape(25, 25).T, atol=1e-6)
    assert sim[2, 2, 2, 3] > sim[2, 2, 2, 4] > sim[2, 2, 0, 0]  # nearer is more similar
    model = vit_jax.create_model('testing', num_classes=3, img_size=12, patch_size=4)
    learned = np.arange(10 * 10, dtype=np.float32).reshape(1, 10, 10)
    params = {'Transformer': {'posembed_input': {'pos_embedding': learned}}}
    np.testing.assert_array_equal(analysis.position_embedding(model, params), learned[0, 1:])
    with pytest.raises(ModelError, match='no position embedding'):
        analysis.position_embedding(model.clone(pos_embed='none'), params)


def test_filter_components_match_sklearn_pca():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 4, 3, 40)) * np.linspace(3, 0.1, 48).reshape(4, 4, 3, 1)
    components, explained = analysis.filter_components(kernel, count=5)
    pca = PCA(5).fit(kernel.reshape(48, 40).T)
    assert components.shape == (5, 4, 4, 3)
    np.testing.assert_allclose(explained, pca.explained_variance_ratio_, rtol=1e-4)
    cos = np.abs(np.sum(components.reshape(5, 48) * pca.components_, axis=1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-4)


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory, digits_config):
    from vit_jax.train.loop import train

    workdir = str(tmp_path_factory.mktemp('trained'))
    config = digits_config(
        ('model.embed_dim', '16'), ('model.depth', '2'), ('model.classifier', 'token'),
        ('batch', '32'), ('total_steps', '6'), ('warmup_steps', '1'), ('eval_every', '0'),
        ('checkpoint_every', '3'))
    train(config, workdir)
    return workdir


def test_cli_from_a_workdir_and_from_a_weights_file(trained_workdir, tmp_path):
    model, variables, config, classes = Workdir(trained_workdir).load_run()
    assert (model.depth, model.embed_dim, model.num_classes, model.img_size) == (2, 16, 10, 16)
    assert classes == tuple(str(i) for i in range(10))
    _, at_3, _, _ = Workdir(trained_workdir).load_run(step=3)
    assert not np.allclose(at_3['params']['head']['kernel'], variables['params']['head']['kernel'])

    out = tmp_path / 'from_workdir'
    assert run.main(['--workdir', trained_workdir, '--out', str(out)]) == 0
    names = {'analysis.json', 'attention_distance.png', 'position_similarity.png',
             'patch_filters.png', 'attention_astronaut.png', 'attention_chelsea.png',
             'attention_coffee.png'}
    assert set(os.listdir(out)) == names
    numbers = json.loads((out / 'analysis.json').read_text())
    assert np.asarray(numbers['mean_attention_distance']).shape == (2, 4)  # [blocks, heads]
    assert np.asarray(numbers['position_similarity']).shape == (4, 4, 4, 4)
    np.testing.assert_allclose(sum(numbers['patch_filter_explained_variance']), 1.0, atol=1e-3)
    images = run.sample_images(list(run.SAMPLE_IMAGES), 16)
    expected = analysis.mean_attention_distance(
        analysis.attention_weights(model, variables, run.normalize(
            np.stack(list(images.values())), config.model_name)), (4, 4), 4, 1)
    np.testing.assert_allclose(numbers['mean_attention_distance'], expected, atol=1e-3)

    weights.save_npz(variables, tmp_path / 'w.npz')
    out = tmp_path / 'from_weights'
    argv = ['--weights', str(tmp_path / 'w.npz'), '--model', 'ViT-Ti_16', '--img_size', '16',
            '--num_classes', '10', '--option', 'patch_size=4', '--option', 'embed_dim=16',
            '--option', 'depth=2', '--option', 'num_heads=4', '--option', 'mlp_ratio=2.0',
            '--images', 'chelsea', '--out', str(out)]
    assert run.main(argv) == 0
    again = json.loads((out / 'analysis.json').read_text())
    assert again['patch_filter_explained_variance'] == numbers['patch_filter_explained_variance']
    assert run.main(argv[:-4] + ['--images', 'no_such_photo', '--out', str(out)]) == 2


def test_sample_images_are_square_crops_in_unit_range():
    images = run.sample_images(['chelsea'], 32)
    assert images['chelsea'].shape == (32, 32, 3)
    assert 0.0 <= images['chelsea'].min() < images['chelsea'].max() <= 1.0
    normalized = run.normalize(images['chelsea'], 'ViT-B_16')
    np.testing.assert_allclose(normalized, images['chelsea'] * 2 - 1, atol=1e-6)
    assert float(jnp.abs(normalized).max()) <= 1.0


def test_a_hybrid_is_analysed_without_patch_filters(tmp_path):
    # Issue 14, point 7: the hybrid's patch embedding reads ResNet features, not pixels.
    model = vit_jax.create_model('R+ViT-Ti_16', num_classes=4, img_size=32, depth=1)
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))()
    images = {'noise': np.random.RandomState(0).rand(32, 32, 3).astype(np.float32)}
    results = run.analyze(model, variables, images, str(tmp_path), model_name='R+ViT-Ti_16')
    assert 'not RGB pixels' in results['patch_filter_explained_variance']
    assert sorted(os.listdir(tmp_path)) == ['analysis.json', 'attention_distance.png',
                                            'attention_noise.png', 'position_similarity.png']
