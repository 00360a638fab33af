"""Few-shot linear evaluation: the closed-form ridge against scikit-learn's Ridge on the same
features (both branches of the closed form), the k-per-class draw, and features of a headless
model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Ridge

import vit_jax
from vit_jax.train import fewshot
from vit_jax.train.workdir import Workdir


def sklearn_reference(train_x, train_y, test_x, num_classes, l2):
    """The same regression with scikit-learn: whitened features, a bias feature of 100, ±1
    targets, no intercept of its own."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5

    def prep(x):
        return np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)

    targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver='cholesky').fit(prep(train_x), targets)
    return ridge.coef_.T, ridge.predict(prep(test_x)).argmax(-1)


@pytest.mark.parametrize('n, dim', [(200, 16), (30, 64)])  # n >= dim and n < dim
def test_ridge_equals_sklearn(n, dim):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, dim)) * 2
    train_y, test_y = rng.integers(0, 5, n), rng.integers(0, 5, 100)
    train_x = (centres[train_y] + rng.normal(size=(n, dim))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(100, dim))).astype(np.float32)
    for l2 in (1.0, fewshot.L2_REG):
        w, _, _ = fewshot.ridge_weights(jnp.asarray(train_x), jnp.asarray(train_y), 5, l2)
        coef, predictions = sklearn_reference(train_x, train_y, test_x, 5, l2)
        exact, _ = sklearn_reference(train_x.astype(np.float64), train_y,
                                     test_x.astype(np.float64), 5, l2)
        # As close to the exact (float64) solution as scikit-learn's own float32 solve: with
        # fewer examples than features the system is ill-conditioned (the bias feature is 100),
        # and two float32 solves differ by their rounding (3e-5 here), not by an error of ours.
        assert np.abs(w - exact).max() <= 2 * np.abs(coef - exact).max() + 1e-6
        np.testing.assert_allclose(w, exact, rtol=2e-3, atol=1e-4)
        accuracy = fewshot.ridge_accuracy(train_x, train_y, test_x, test_y, 5, l2)
        assert accuracy == pytest.approx(np.mean(predictions == test_y), abs=1e-6)
    assert accuracy > 0.8  # separable clusters: the classifier works at all


def test_shot_indices_draw_k_per_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    index = fewshot.shot_indices(labels, 5, 3)
    assert np.bincount(labels[index]).tolist() == [5, 3, 5]
    assert len(set(index)) == len(index)
    np.testing.assert_array_equal(index, fewshot.shot_indices(labels, 5, 3))


def test_features_are_the_pre_logits_of_the_headless_model():
    model = vit_jax.create_model('testing', num_classes=7, img_size=8, patch_size=4)
    images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    variables = model.init(jax.random.key(0), images)
    feats = fewshot.features(model, variables, images)
    assert feats.shape == (3, model.embed_dim)
    head = variables['params']['head']
    np.testing.assert_allclose(feats @ head['kernel'] + head['bias'],
                               model.apply(variables, images), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- in the loop, CLI


FEWSHOT_RUN = {'total_steps': 20, 'warmup_steps': 5, 'batch': 64, 'eval_every': 10,
               'checkpoint_every': 10, 'progress_every': 10, 'fewshot_every': 10,
               'fewshot_shots': (1, 5)}


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory, digits_config):
    """A 20-step digits run logging few-shot accuracy at steps 10 and 20."""
    from vit_jax.train import loop

    workdir = str(tmp_path_factory.mktemp('fewshot_run'))
    loop.train(digits_config(*((k, str(v)) for k, v in FEWSHOT_RUN.items())), workdir)
    return workdir


@pytest.mark.slow
def test_the_loop_logs_fewshot_accuracy_and_the_cli_gives_the_same(digits_run, capsys):
    from vit_jax import data
    from vit_jax import fewshot as fewshot_cli

    logged = {r['step']: r for r in Workdir(digits_run).read_metrics() if 'fewshot_k1' in r}
    assert sorted(logged) == [10, 20]
    assert fewshot_cli.main([f'--workdir={digits_run}']) == 0
    printed = dict(line.split(' = ') for line in capsys.readouterr().out.splitlines())
    assert sorted(printed) == ['fewshot_k1', 'fewshot_k5']
    for key, value in printed.items():  # the loop's (sharded) features give the CLI's numbers
        assert float(value) == pytest.approx(logged[20][key], abs=1e-6)
    # ... and the function on the features of the whole splits, written out.
    model, variables, config, _ = Workdir(digits_run).load_run()
    step = jax.jit(fewshot.feature_step(model, config.pp.normalize))
    train = fewshot.collect_features(step, variables, data.create_datasets(
        fewshot.train_split_config(config))[1]())
    test = fewshot.collect_features(step, variables, data.create_datasets(config)[1]())
    assert (len(train[1]), len(test[1])) == (1437, 360)
    expected = fewshot.fewshot_accuracies(*train, *test, 10, (1, 5), config.seed)
    assert float(printed['fewshot_k5']) == pytest.approx(expected[5], abs=1e-6)
    assert float(printed['fewshot_k1']) == pytest.approx(expected[1], abs=1e-6)


def test_fewshot_runs_after_the_steps_checkpoint(tmp_path, monkeypatch):
    """An evaluator that fails at step 3 loses nothing: that step's checkpoint is saved."""
    import scale_worker

    from vit_jax.data.arrays import array_datasets
    from vit_jax.train import loop

    def broken(*args, **kwargs):
        raise RuntimeError('evaluator failed')

    monkeypatch.setattr(fewshot, 'evaluate', broken)
    config = scale_worker.make_config([('fewshot_every', '3'), ('checkpoint_every', '3')])
    with pytest.raises(RuntimeError, match='evaluator failed'):
        loop.train(config, str(tmp_path), datasets=array_datasets(
            *scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES))
    checkpointer = Workdir(str(tmp_path)).checkpointer(every=0, keep=1, read_only=True)
    assert checkpointer.latest_step() == 3
    checkpointer.close()


def one_line_error(argv, capsys):
    from vit_jax import fewshot as fewshot_cli

    assert fewshot_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1
    return err


def test_cli_bad_workdir_is_one_line(capsys):
    assert 'holds no config.json; is it the --workdir of a run?' in one_line_error(
        ['--workdir=/nonexistent/run'], capsys)


@pytest.mark.slow
@pytest.mark.parametrize('override, message', [
    ('--config.pp.crop=32', 'takes 16px images; leave --config.pp.crop=16'),
    ('--config.bacth=3', 'unknown config key --config.bacth'),
])
def test_cli_bad_overrides_are_one_line(digits_run, capsys, override, message):
    assert message in one_line_error([f'--workdir={digits_run}', override], capsys)


def test_cli_usage_errors(capsys):
    from vit_jax import fewshot as fewshot_cli

    for argv in ([], ['--workdir=x', '--model=ViT-Ti_16'], ['--model=ViT-Ti_16']):
        with pytest.raises(SystemExit) as exit_info:
            fewshot_cli.main(argv)
        assert exit_info.value.code == 2
    assert '--model needs --weights and --config' in capsys.readouterr().err


def test_shots_must_be_positive_integers():
    from vit_jax import config as config_lib
    from vit_jax.errors import ConfigError

    config = config_lib.apply_overrides(config_lib.base_config(), [('fewshot_shots', '(0,)')])
    with pytest.raises(ConfigError, match=r'--config.fewshot_shots must be positive integers '
                                          r'\(examples per class\), e.g. \(1, 5, 10, 25\); '
                                          r'got \(0,\)'):
        config_lib.validate(config)
