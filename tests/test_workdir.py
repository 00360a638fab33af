"""The run reader (`vit_jax.train.workdir`): a finished run reads back as the weights it exported,
any checkpoint by step, the moving average, without writing to the workdir; bad workdirs are
one-line errors. The trainer's `setup` builds no state: its abstract state is what `init`
allocates. And the workdir as a contract (issue 14): a refused launch writes nothing, one run
per workdir, failed writes stop the run in one line, NaN weights are never saved."""

import asyncio
import errno
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scale_worker
import tensorstore as ts
from trees import tree_bytes

from vit_jax import tree, weights
from vit_jax.data.arrays import array_datasets
from vit_jax.errors import ConfigError, TrainingError, VitJaxError, WorkdirError
from vit_jax.train import checkpoint, lock, loop, record
from vit_jax.train.setup import make_mesh, setup
from vit_jax.train.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def assert_same(variables, expected):
    flat, want = (tree.flatten(v) for v in (variables, expected))
    assert sorted(flat) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(value), err_msg=key)


def test_load_run_reads_the_exported_weights_and_writes_nothing(ema_run):
    before = tree_bytes(ema_run)
    model, variables, config, classes = Workdir(ema_run).load_run()
    assert (model.num_classes, model.img_size, model.embed_dim) == (4, 8, 16)
    assert classes == ('0', '1', '2', '3') and config.ema_decay == 0.9
    assert_same(variables, weights.load(model, os.path.join(ema_run, 'weights.npz'), strict=True))
    _, average, _, _ = Workdir(ema_run).load_run(ema=True)
    assert_same(average,
                weights.load(model, os.path.join(ema_run, 'weights_ema.npz'), strict=True))
    _, at_3, _, _ = Workdir(ema_run).load_run(step=3)
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
    _, variables, _, _ = Workdir(workdir).load_run()
    _, at_3, _, _ = Workdir(ema_run).load_run(step=3)
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
        Workdir(workdir).load_run(**kwargs)


def test_setup_allocates_nothing_and_init_matches_its_abstract_state(ema_run):
    config = Workdir(ema_run).read_config()
    run = setup(config, len(Workdir(ema_run).read_classes()),
                make_mesh(config, jax.local_devices()[:1]))
    assert not any(isinstance(x, jax.Array) for x in jax.tree.leaves(run.abstract_state))
    state = run.init(jax.random.PRNGKey(config.seed))
    for abstract, array in zip(jax.tree.leaves(run.abstract_state), jax.tree.leaves(state),
                               strict=True):
        assert (abstract.shape, abstract.dtype, abstract.sharding) == \
            (array.shape, array.dtype, array.sharding)
    batch = {'image': jax.ShapeDtypeStruct((32, 8, 8, 3), np.float32,
                                           sharding=run.batch_sharding),
             'label': jax.ShapeDtypeStruct((32,), np.int32, sharding=run.batch_sharding)}
    compiled = run.train_step.lower(run.abstract_state, batch, run.abstract_extras).compile()
    assert compiled.memory_analysis() is not None


def test_export_of_a_run_gives_the_runs_logits(ema_run, tmp_path):
    from vit_jax import export
    from vit_jax.normalization import NORMALIZATIONS, normalize

    out = tmp_path / 'run.stablehlo'
    assert export.main([f'--workdir={ema_run}', '--format=stablehlo', f'--out={out}']) == 0
    model, variables, config, _ = Workdir(ema_run).load_run()
    x = np.random.default_rng(0).integers(0, 256, (3, model.img_size, model.img_size, 3))
    want = model.apply(variables, normalize(x.astype(np.float32),
                                            **NORMALIZATIONS[config.pp.normalize]), train=False)
    with open(out, 'rb') as f:
        got = jax.export.deserialize(f.read()).call(x.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


# ------------------------------------------------------------------- the workdir as a contract

def tiny_data():
    return array_datasets(*scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES)


def train_here(workdir, *overrides, datasets=None):
    return loop.train(scale_worker.make_config(overrides), str(workdir),
                      datasets=datasets or tiny_data())


def test_changed_optimizer_is_refused_without_touching_the_workdir_then_resumes(tmp_path):
    # Issue 14, points 1 and 2: another optimizer, grad_norm_clip 0 <-> > 0, another width.
    train_here(tmp_path, ('checkpoint_every', '2'), ('total_steps', '4'))
    before = tree_bytes(tmp_path)
    for overrides, message in [
            ((('optimizer', 'adamw'),), r"optimizer='sgd' there, 'adamw' here"),
            ((('grad_norm_clip', '0'),), r'grad_norm_clip=1.0 there, 0.0 here'),
            ((('model.embed_dim', '8'), ('model.act_layer', 'relu')),
             r"model.act_layer=None there, 'relu' here, model.embed_dim=16 there, 8 here")]:
        with pytest.raises(ConfigError, match=rf'holds a run of another config \({message}\); '
                                              r'rerun with its values .* --config.init_from='):
            train_here(tmp_path, ('checkpoint_every', '2'), ('total_steps', '6'), *overrides)
        assert tree_bytes(tmp_path) == before  # byte-identical: nothing written or moved
    # The original command, with a may-change key changed, resumes at its latest step.
    train_here(tmp_path, ('checkpoint_every', '2'), ('total_steps', '6'))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '6']
    steps = [r['step'] for r in Workdir(str(tmp_path)).read_metrics() if 'train_loss' in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    launches = [json.loads(line) for line in open(tmp_path / 'runs.jsonl')]
    assert [(r['start_step'], r['changed']) for r in launches] == [
        (0, {}), (4, {'total_steps': {'was': 4, 'now': 6}})]
    assert Workdir(str(tmp_path)).read_config().total_steps == 6


def test_a_record_without_the_keys_a_later_version_added_matches_their_defaults():
    config = scale_worker.make_config()
    saved = record.flat_config(config)
    for key in ('model.dist_head', 'loss', 'pp.eval_crop_pct'):  # added after 0.1.0
        del saved[key]
    assert record.config_diff(saved, config) == {}
    config.loss = 'sigmoid_xent'  # a value other than the default still differs
    assert record.config_diff(saved, config) == {'loss': ('softmax_xent', 'sigmoid_xent')}


def test_a_checkpoint_of_another_optimizer_stays_where_it_is(ema_run, tmp_path):
    # The checkpointer itself: a readable checkpoint of another state is an error, not corrupt.
    workdir = str(tmp_path / 'copy')
    shutil.copytree(ema_run, workdir)
    config = scale_worker.make_config([*EMA, ('optimizer', 'adamw')])
    run = setup(config, scale_worker.NUM_CLASSES, make_mesh(config))
    ckpt = Workdir(workdir).checkpointer(every=0, keep=3)
    with pytest.raises(ConfigError, match=r'checkpoint 6 in .* holds another training state '
                                          r'than this run .*another optimizer'):
        ckpt.restore(run.abstract_state, config.model_name)
    ckpt.close()
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


def test_init_from_takes_the_weights_not_the_optimizer_state(ema_run, tmp_path):
    # A deliberate change: continue the EMA run with AdamW in a new workdir.
    final = train_here(tmp_path, *EMA, ('optimizer', 'adamw'), ('base_lr', '0'),
                       ('warmup_steps', '0'), ('total_steps', '1'), ('init_from', ema_run))
    _, start, _, _ = Workdir(ema_run).load_run()
    _, after, _, _ = Workdir(str(tmp_path)).load_run()
    assert_same(after['params'], start['params'])  # learning rate 0: the weights it took
    _, average, _, _ = Workdir(str(tmp_path)).load_run(ema=True)
    _, old_average, _, _ = Workdir(ema_run).load_run(ema=True)
    for a, b, p in zip(jax.tree.leaves(average), jax.tree.leaves(old_average),
                       jax.tree.leaves(start), strict=True):  # 0.9 * old average + 0.1 * params
        np.testing.assert_allclose(a, 0.9 * np.asarray(b) + 0.1 * np.asarray(p), rtol=1e-5,
                                   atol=1e-6)
    assert final['count'] == scale_worker.NUM_EVAL
    with pytest.raises(ConfigError, match=r'init_from=.* holds another model: params/.* is '
                                          r'\(16,\) there, \(8,\) here'):
        train_here(tmp_path / 'wide', ('model.embed_dim', '8'), ('init_from', ema_run))


def test_a_second_launch_is_refused_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    # Issue 14, point 3. A live holder (another process of this host): refused, nothing written.
    sleeper = subprocess.Popen(['sleep', '60'])
    try:
        (tmp_path / 'lock').write_text(json.dumps(
            {'host': socket.gethostname(), 'pid': sleeper.pid, 'started': 'then'}))
        before = tree_bytes(tmp_path)
        with pytest.raises(WorkdirError, match=rf'^{tmp_path} is in use by process '
                                               rf'{sleeper.pid} on {socket.gethostname()} '
                                               r'\(started then\); wait for that run'):
            train_here(tmp_path)
        assert tree_bytes(tmp_path) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING):  # the holder is gone now
        train_here(tmp_path, ('total_steps', '2'))
    assert f'taking over the lock of process {sleeper.pid}' in caplog.text
    assert not os.path.exists(tmp_path / 'lock')  # released at exit


def race_for_the_lock(workdir, launches):
    """`launches` locks of `workdir` taken at once, each from its own thread and open file:
    those that got it, and the errors of the others."""
    locks = [lock.WorkdirLock(workdir / 'lock') for _ in range(launches)]
    start = threading.Barrier(launches)
    won, refused = [], []

    def launch(one):
        start.wait()
        try:
            won.append(one.__enter__())
        except WorkdirError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=launch, args=(one,)) for one in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, refused


def test_one_of_many_launches_takes_over_a_dead_holders_lock(tmp_path, caplog):
    # Launches racing to take over a stale lock: exactly one wins, every other one is refused
    # naming the winner.
    dead = subprocess.Popen(['true'])
    dead.wait()
    launches, rounds = 8, 20
    for r in range(rounds):
        workdir = tmp_path / str(r)
        workdir.mkdir()
        (workdir / 'lock').write_text(json.dumps(
            {'host': socket.gethostname(), 'pid': dead.pid, 'started': 'then'}))
        with caplog.at_level(logging.WARNING):
            won, refused = race_for_the_lock(workdir, launches)
        assert len(won) == 1, f'round {r}: {len(won)} launches took the lock'
        assert json.loads((workdir / 'lock').read_text()) == won[0].holder
        assert len(refused) == launches - 1
        for message in refused:
            assert re.fullmatch(rf'{workdir} is in use by process {os.getpid()} on '
                                rf'{socket.gethostname()} \(started .*\); wait for that run .*',
                                message), message
        won[0].__exit__(None, None, None)
        assert not os.path.exists(workdir / 'lock')
    assert caplog.text.count(f'taking over the lock of process {dead.pid}') == rounds


@pytest.mark.slow
def test_a_concurrent_second_launch_leaves_the_first_untouched(tmp_path):
    # A real run in its own process; a second launch while it trains is refused, and the first
    # finishes with the parameters of an undisturbed run.
    spec = {'workdir': str(tmp_path / 'run'), 'params_out': str(tmp_path / 'first.npz'),
            'overrides': [['total_steps', '200'], ['checkpoint_every', '50']]}
    first = subprocess.Popen([sys.executable, os.path.join(REPO, 'tests', 'scale_worker.py'),
                              json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if line.startswith('step 5/'):
                break
        with pytest.raises(WorkdirError, match=rf'is in use by process {first.pid} '):
            train_here(tmp_path / 'run', ('total_steps', '200'), ('checkpoint_every', '50'))
        first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0
    train_here(tmp_path / 'alone', ('total_steps', '200'), ('checkpoint_every', '50'))
    alone = scale_worker.final_params(scale_worker.make_config(
        [('total_steps', '200')]), str(tmp_path / 'alone'))
    ran = np.load(tmp_path / 'first.npz')
    assert sorted(ran) == sorted(alone)
    for key in alone:
        np.testing.assert_array_equal(ran[key], alone[key], err_msg=key)
    steps = [r['step'] for r in Workdir(spec['workdir']).read_metrics() if 'train_loss' in r]
    assert steps == list(range(1, 201))


def test_a_full_disk_stops_the_run_in_one_line_and_the_last_checkpoint_restores(
        tmp_path, monkeypatch):
    # Issue 14, point 4: the writer of checkpoint 4 raises ENOSPC.
    train_here(tmp_path / 'ok', ('checkpoint_every', '2'), ('total_steps', '2'))
    saved = scale_worker.final_params(scale_worker.make_config(), str(tmp_path / 'ok'))
    write = ocp.StandardCheckpointHandler.async_save

    def full(self, directory, *args, **kwargs):
        if os.path.basename(os.path.dirname(str(directory))).startswith('4.'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return write(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', full)
    with pytest.raises(WorkdirError, match=r'^saving a checkpoint in .*checkpoints failed '
                                           r'\(.*checkpoints/4.*: No space left on device\); '
                                           r'the run stopped. .* resume from step 2$'):
        train_here(tmp_path / 'ok', ('checkpoint_every', '2'), ('total_steps', '6'))
    steps = [r['step'] for r in Workdir(str(tmp_path / 'ok')).read_metrics()]
    assert max(steps) == 4  # stopped at the step of the failed save
    monkeypatch.undo()
    assert scale_worker.final_params(scale_worker.make_config(), str(tmp_path / 'ok')).keys() \
        == saved.keys()
    for key, value in scale_worker.final_params(scale_worker.make_config(),
                                                str(tmp_path / 'ok')).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


def test_a_full_disk_is_one_line_on_stderr(tmp_path):
    # Issue 14, point 4, as the command line shows it: the save of step 50 fails in orbax's
    # background threads (which log the error and go on); the run stops soon after, not at its
    # next save (step 100), and the writes of the failed save that were in flight complete
    # after it stopped without a traceback.
    workdir = tmp_path / 'run'
    train_here(workdir, ('checkpoint_every', '2'), ('total_steps', '2'))
    saved = scale_worker.final_params(scale_worker.make_config(), str(workdir))
    before = tree_bytes(workdir / 'checkpoints' / '2')
    out = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'full_disk_worker.py'),
                          '50', f'--workdir={workdir}', '--config.checkpoint_every=50',
                          '--config.total_steps=100'], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 2, out.stderr
    assert 'Traceback' not in out.stderr and 'Event loop' not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, out.stderr
    assert re.fullmatch(rf'error: saving a checkpoint in {workdir}/checkpoints failed \('
                        rf'{workdir}/checkpoints/50\.orbax-checkpoint-tmp/.*: No space left on '
                        r'device\); the run stopped\. .* resume from step 2', errors[0])
    assert 50 <= max(r['step'] for r in Workdir(str(workdir)).read_metrics()) < 100
    assert tree_bytes(workdir / 'checkpoints' / '2') == before
    for key, value in scale_worker.final_params(scale_worker.make_config(),
                                                str(workdir)).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


def late_write():
    """A tensorstore write awaited by a save that failed (its event loop closed): completing
    it reports `RuntimeError('Event loop is closed')` to `sys.unraisablehook`."""
    promise, write = ts.Promise.new()

    async def save():
        async def enospc():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        await asyncio.gather(enospc(), write)

    loop = asyncio.new_event_loop()
    with pytest.raises(OSError):
        loop.run_until_complete(save())
    loop.close()
    return lambda: promise.set_result(None)


def test_late_writes_are_held_during_a_save_and_dropped_only_when_it_failed(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, 'unraisablehook', lambda r: reported.append(str(r.exc_value)))
    late = checkpoint._LateWrites()

    def other():  # any other unraisable error, e.g. in a __del__
        class Broken:
            def __del__(self):
                raise ValueError('broken')
        Broken()

    late_write()()  # no save in flight: reported at once
    assert reported == ['Event loop is closed']
    late.start()
    late_write()()
    other()
    assert reported == ['Event loop is closed', 'broken']  # held
    late.settle(failed=False)  # the save succeeded: reported after all
    assert reported == ['Event loop is closed', 'broken', 'Event loop is closed']
    late.start()
    complete = late_write()
    late.settle(failed=True)
    complete()
    late.start()
    late_write()()
    other()
    late.close()
    assert reported == ['Event loop is closed', 'broken', 'Event loop is closed', 'broken']
    assert sys.unraisablehook == late._hook  # after the failure it stays for the late writes
    late._state = 'idle'
    late.close()
    assert sys.unraisablehook != late._hook


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no process may write to: a read-only tmpfs for root, else mode 0o555."""
    path = tmp_path / 'ro'
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(path)],
                      capture_output=True).returncode:
        pytest.skip('root without mount: no way to make a read-only folder')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], check=True)


def test_a_read_only_workdir_is_refused_before_anything_is_built(read_only_dir, monkeypatch):
    # Issue 14, point 7: one line, before the data, the model or a compilation.
    monkeypatch.setattr(loop, 'setup', lambda *a: pytest.fail('set up a run it cannot save'))
    with pytest.raises(WorkdirError, match=rf'^cannot write {read_only_dir}: Read-only file '
                                           r'system; use a writable --workdir'):
        train_here(read_only_dir)


def test_nan_weights_are_never_saved(tmp_path):
    # Issue 14, point 6: an infinite learning rate gives finite loss and gradients at step 1,
    # and NaN weights after it.
    with pytest.raises(TrainingError, match=r'or updated weights at step 1; .*last good '
                                            r'checkpoint \(step none\)'):
        train_here(tmp_path, ('base_lr', 'inf'), ('checkpoint_every', '1'))
    assert os.listdir(tmp_path / 'checkpoints') == []


def test_a_torn_last_line_of_metrics_is_dropped_at_the_relaunch(tmp_path):
    # What a kill or a full disk in the middle of an append leaves; the relaunch resumes at 4.
    workdir = Workdir(tmp_path)
    workdir.file('metrics.jsonl').write_text(
        '{"step": 2, "train_loss": 1.5}\n{"step": 4, "train_loss": 1.2}\n'
        '{"step": 6, "train_loss": 1.0}\n{"step": 8, "trai')
    with pytest.raises(ValueError):
        json.loads(workdir.file('metrics.jsonl').read_text().splitlines()[-1])
    writer = workdir.metric_writer()
    writer.truncate(4)
    writer.write(6, {'train_loss': 0.9})
    writer.close()
    assert workdir.read_metrics() == [{'step': 2, 'train_loss': 1.5},
                                      {'step': 4, 'train_loss': 1.2},
                                      {'step': 6, 'train_loss': 0.9}]


@pytest.mark.parametrize('text, message', [('{"seed": 0,', 'is not valid JSON'),
                                           ('[1, 2]', 'holds no config \\(a JSON list\\)')])
def test_a_broken_config_json_is_one_line_and_nothing_is_written(tmp_path, text, message):
    (tmp_path / 'config.json').write_text(text)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(WorkdirError, match=rf'^{tmp_path}/config.json {message}.*start a new '
                                           r'--workdir$'):
        train_here(tmp_path)
    assert sorted(os.listdir(tmp_path)) == before


# Issue 27: the workdir's own files are input too.

def relaunch(workdir, *overrides):
    """The ema_run's config, three steps longer, in `workdir`."""
    return train_here(workdir, *EMA, ('total_steps', '9'), *overrides)


@pytest.mark.parametrize('damage, message', [
    (lambda d: (d / 'metrics.jsonl').write_text('{"step": 3}\nxx\n{"step": 6}\n'),
     r'metrics.jsonl: line 2 is not JSON; delete that line, or move the file aside'),
    (lambda d: (d / 'metrics.jsonl').write_text('{"step": 3}\n[1]\n'),
     r'metrics.jsonl: line 2 is no record \(a JSON object with an integer "step"\)'),
    (lambda d: (d / 'metrics.jsonl').write_bytes(b'{"step": 3}\n\xff\n'),
     r'metrics.jsonl is not UTF-8 text \(invalid start byte at byte 12\)'),
    (lambda d: ((d / 'runs.jsonl').unlink(), (d / 'runs.jsonl').mkdir()),
     r'^cannot read .*runs.jsonl: .*Is a directory'),
    (lambda d: (shutil.rmtree(d / 'checkpoints'), (d / 'checkpoints').write_text('x')),
     r'checkpoints is not a folder; restore it from a copy'),
    (lambda d: (d / 'config.json').write_text('{"model_name": "testing", "model": [1]}'),
     r'config.json names no model \(a string model_name, objects model and pp\)'),
    (lambda d: (d / 'classes.txt').write_bytes(b'\xff\n1\n2\n3\n'),
     r'classes.txt is not UTF-8 text'),
    (lambda d: (d / 'classes.txt').write_text('0\n0\n2\n3\n'),
     r"classes.txt names \['0'\] more than once; restore it from a copy"),
    # The record gone beside checkpoints: nothing would stop a changed config.
    (lambda d: (d / 'config.json').unlink(),
     r'holds checkpoints but no config.json, so nothing says what they were trained with; '
     r'restore config.json from a copy, or start a new --workdir from their weights with '
     r'--config.init_from='),
    (lambda d: (d / 'classes.txt').unlink(), r'holds checkpoints but no classes.txt'),
])
def test_damaged_run_files_are_one_line_and_nothing_is_written(ema_run, tmp_path, damage,
                                                               message):
    workdir = tmp_path / 'copy'
    shutil.copytree(ema_run, workdir)
    damage(workdir)
    before = tree_bytes(workdir), sorted(os.listdir(workdir))
    # With the record gone, a change that the record would refuse.
    changed = [('label_smoothing', '0.1')] if 'no config.json' in message else []
    with pytest.raises(WorkdirError, match=message):
        relaunch(workdir, *changed)
    assert (tree_bytes(workdir), sorted(os.listdir(workdir))) == before


@pytest.mark.parametrize('text, message', [
    ('{"model_name": 7, "model": {}, "pp": {}}', 'names no model'),
    ('{"model_name": "testing", "model": {}}', r"describes no model vit_jax builds \("),
])
def test_a_config_json_that_names_no_model_reads_as_one_line(ema_run, tmp_path, text, message):
    workdir = tmp_path / 'copy'
    shutil.copytree(ema_run, workdir)
    (workdir / 'config.json').write_text(text)
    with pytest.raises(WorkdirError, match=rf'^{workdir}/config.json {message}.*start a new '
                                           r'--workdir$'):
        Workdir(workdir).load_run()


def test_run_logs_are_repaired_or_kept_byte_for_byte(tmp_path):
    # A torn last line of runs.jsonl is completed; bytes that are not UTF-8 are kept as they
    # are (runs.jsonl is only ever appended to); classes.txt reads with any line ending.
    workdir = Workdir(tmp_path)
    workdir.file('runs.jsonl').write_bytes(b'\xff{"start_step": 0}\n{"start')
    workdir.log_launch(3, {})
    lines = workdir.file('runs.jsonl').read_bytes().split(b'\n')
    assert lines[:2] == [b'\xff{"start_step": 0}', b'{"start'] and lines[-1] == b''
    assert json.loads(lines[2])['start_step'] == 3
    workdir.file('classes.txt').write_bytes(b'cat\r\ndog\r\n')
    assert workdir.read_classes() == ('cat', 'dog')


def test_a_latest_checkpoint_without_array_metadata_falls_back(ema_run, tmp_path, caplog):
    # The README promises the previous checkpoint for a latest one that lost files.
    workdir = tmp_path / 'copy'
    shutil.copytree(ema_run, workdir)
    os.remove(workdir / 'checkpoints' / '6' / 'state' / '_METADATA')
    config = Workdir(workdir).read_config()
    run = setup(config, 4, make_mesh(config, jax.local_devices()[:1]))
    checkpointer = Workdir(workdir).checkpointer(every=3, keep=2)
    state, position = checkpointer.restore(run.abstract_state, config.model_name)
    checkpointer.close()
    assert int(state.step) == 3 and position['step'] == 3
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', 'corrupt-6']
    assert 'array metadata (state/_METADATA) is missing or damaged' in caplog.text


def test_reading_a_run_logs_nothing_from_orbax(ema_run, caplog):
    # `--workdir` readers printed `WARNING:absl:...read only...` before their answer.
    with caplog.at_level(logging.INFO, logger='absl'):
        Workdir(ema_run).load_run()
        Workdir(ema_run).load_run(step=3, ema=True)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
