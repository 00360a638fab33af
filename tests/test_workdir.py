"""The run reader (`vit_jax.workdir`): a finished run reads back as the weights it exported, any
checkpoint by step, the moving average, without writing to the workdir; bad workdirs are
one-line errors. And the trainer's `setup` builds no state: its abstract state is what
`init` allocates."""

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest
import scale_worker

from vit_jax import tree, weights
from vit_jax.data.arrays import array_datasets
from vit_jax.errors import VitJaxError
from vit_jax.train import loop
from vit_jax.workdir import load_run, run_setup

EMA = [('ema_decay', '0.9'), ('checkpoint_every', '3')]


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
    """A finished 6-step run of the scale tests' tiny ViT with a moving average, saved at
    steps 3 and 6."""
    workdir = str(tmp_path_factory.mktemp('run'))
    config = scale_worker.make_config(EMA)
    loop.train(config, workdir, datasets=array_datasets(
        *scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES))
    return workdir


def tree_bytes(directory):
    """Every file under `directory` (path -> sha256), to show that nothing changed."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_same(variables, expected):
    flat, want = (tree.flatten(v) for v in (variables, expected))
    assert sorted(flat) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(value), err_msg=key)


def test_load_run_reads_the_exported_weights_and_writes_nothing(ema_run):
    before = tree_bytes(ema_run)
    model, variables, config, classes = load_run(ema_run)
    assert (model.num_classes, model.img_size, model.embed_dim) == (4, 8, 16)
    assert classes == ('0', '1', '2', '3') and config.ema_decay == 0.9
    assert_same(variables, weights.load(model, os.path.join(ema_run, 'weights.npz'), strict=True))
    _, average, _, _ = load_run(ema_run, ema=True)
    assert_same(average,
                weights.load(model, os.path.join(ema_run, 'weights_ema.npz'), strict=True))
    _, at_3, _, _ = load_run(ema_run, step=3)
    assert not np.array_equal(at_3['params']['head']['kernel'],
                              variables['params']['head']['kernel'])
    assert tree_bytes(ema_run) == before


def test_an_unreadable_checkpoint_is_skipped_where_it_lies(ema_run, tmp_path):
    workdir = str(tmp_path / 'copy')
    shutil.copytree(ema_run, workdir)
    for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '6', 'state')):
        for name in files:
            if name != '_METADATA':
                open(os.path.join(root, name), 'wb').close()  # truncated arrays
    os.makedirs(os.path.join(workdir, 'checkpoints', '9.orbax-checkpoint-tmp-1'))  # in flight
    before = tree_bytes(workdir), sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    _, variables, _, _ = load_run(workdir)
    _, at_3, _, _ = load_run(ema_run, step=3)
    assert_same(variables, at_3)
    assert (tree_bytes(workdir), sorted(os.listdir(os.path.join(workdir, 'checkpoints')))) \
        == before


@pytest.mark.parametrize('prepare, kwargs, message', [
    (lambda d: os.remove(os.path.join(d, 'config.json')), {},
     r'holds no config.json; is it the --workdir of a run\?$'),
    (lambda d: os.remove(os.path.join(d, 'classes.txt')), {},
     r'holds no classes.txt; is it the --workdir of a run\?$'),
    (lambda d: shutil.rmtree(os.path.join(d, 'checkpoints')), {},
     r'checkpoints holds no checkpoint; has the run in .* saved one yet\?$'),
    (lambda d: None, {'step': 4},
     r'^no readable checkpoint 4 in .*checkpoints; steps there: \[3, 6\]$'),
])
def test_bad_workdirs_are_one_line_errors(ema_run, tmp_path, prepare, kwargs, message):
    workdir = str(tmp_path / 'copy')
    shutil.copytree(ema_run, workdir)
    prepare(workdir)
    with pytest.raises(VitJaxError, match=message):
        load_run(workdir, **kwargs)


def test_setup_allocates_nothing_and_init_matches_its_abstract_state(ema_run):
    run, config, _ = run_setup(ema_run)
    assert not any(isinstance(x, jax.Array) for x in jax.tree.leaves(run.abstract_state))
    state = run.init(jax.random.PRNGKey(config.seed))
    for abstract, array in zip(jax.tree.leaves(run.abstract_state), jax.tree.leaves(state),
                               strict=True):
        assert (abstract.shape, abstract.dtype, abstract.sharding) == \
            (array.shape, array.dtype, array.sharding)
    batch = {'image': jax.ShapeDtypeStruct((32, 8, 8, 3), np.float32,
                                           sharding=run.batch_sharding),
             'label': jax.ShapeDtypeStruct((32,), np.int32, sharding=run.batch_sharding)}
    compiled = run.train_step.lower(run.abstract_state, batch).compile()
    assert compiled.memory_analysis() is not None


def test_export_of_a_run_gives_the_runs_logits(ema_run, tmp_path):
    from vit_jax import export
    from vit_jax.normalization import NORMALIZATIONS, normalize

    out = tmp_path / 'run.stablehlo'
    assert export.main([f'--workdir={ema_run}', '--format=stablehlo', f'--out={out}']) == 0
    model, variables, config, _ = load_run(ema_run)
    x = np.random.default_rng(0).integers(0, 256, (3, model.img_size, model.img_size, 3))
    want = model.apply(variables, normalize(x.astype(np.float32),
                                            **NORMALIZATIONS[config.pp.normalize]), train=False)
    with open(out, 'rb') as f:
        got = jax.export.deserialize(f.read()).call(x.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
