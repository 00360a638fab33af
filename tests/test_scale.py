"""Scale-out and never losing work: placement rules, 1 vs 8 devices vs 4x2 data x FSDP vs
2x2x2 data x FSDP x model (also with the layers scanned) vs accumulation, 1 vs 2 processes,
bit-exact resume after SIGKILL (also on 2x2x2) and SIGTERM, corrupt checkpoints, non-finite
stops, the data position, and eval counts.

Runs with several devices or processes happen in subprocesses (`scale_worker.py`) with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`; 1-device baselines run in this process.
"""

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scale_worker
from jax.sharding import PartitionSpec as P

import vit_jax
from vit_jax import tree
from vit_jax.data import arrays
from vit_jax.errors import ConfigError, TrainingError
from vit_jax.train import optim, sharding, step
from vit_jax.train.loop import train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scale_worker.py')
FIGURES = os.environ.get('VIT_JAX_SCALE_FIGURES')  # where to append measured differences


def data():
    return arrays.array_datasets(*scale_worker.synthetic(), num_classes=scale_worker.NUM_CLASSES)


def train_here(workdir, *overrides, datasets=None):
    """Trains the worker's config in this (1-device) process; returns final params."""
    config = scale_worker.make_config(overrides)
    result = train(config, str(workdir), datasets=datasets or data())
    return result, scale_worker.final_params(config, str(workdir))


def max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def record(name, value):
    if FIGURES:
        with open(FIGURES, 'a') as f:
            f.write(f'{name}: {value}\n')


def worker_env(devices):
    return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
            'JAX_PLATFORMS': 'cpu'}


def run_worker(spec, devices, timeout=400):
    out = subprocess.run([sys.executable, WORKER, json.dumps(spec)], env=worker_env(devices),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [json.loads(line[len('RESULT '):]) for line in out.stdout.splitlines()
            if line.startswith('RESULT ')]


@pytest.fixture(scope='module')
def baseline(tmp_path_factory):
    """The 6-step run on one device: (final eval, params)."""
    return train_here(tmp_path_factory.mktemp('baseline'))


# ----------------------------------------------------------------------------- placement


def test_mesh_sizes_and_errors():
    assert sharding._axis_sizes([('data', -1)], 8) == {'data': 8, 'fsdp': 1, 'model': 1}
    assert sharding._axis_sizes([('data', 4), ('fsdp', 2)], 8) == {'data': 4, 'fsdp': 2,
                                                                    'model': 1}
    assert sharding._axis_sizes([('fsdp', -1), ('data', 2)], 8) == {'data': 2, 'fsdp': 4,
                                                                    'model': 1}
    assert sharding._axis_sizes([('model', 2), ('data', -1), ('fsdp', 2)], 8) == {
        'data': 2, 'fsdp': 2, 'model': 2}
    for spec, message in [
            ([('data', 4), ('fsdp', 4)], 'needs 16 devices but there are 8'),
            ([('data', -1), ('fsdp', 3)], '8 is not divisible by 3'),
            ([('tensor', 2)], "axes must be distinct names out of \\('data', 'fsdp', 'model'\\)"),
            ([('data', -1), ('fsdp', -1)], 'at most one -1'),
            (['data'], 'is not a list of \\(axis, size\\) pairs')]:
        with pytest.raises(ConfigError, match=message):
            sharding._axis_sizes(spec, 8)


def test_placement_rules_cover_params_and_their_optimizer_state():
    model = vit_jax.create_model('testing', num_classes=4, img_size=8, patch_size=4,
                                 embed_dim=16)
    config = scale_worker.make_config([('optim_dtype', 'bfloat16')])
    tx = optim.create_optimizer(config)[0]
    shapes = jax.eval_shape(lambda r: step.create_train_state(model, tx, r, (1, 8, 8, 3)),
                            jax.random.PRNGKey(0))
    rules = [('pos_embedding', 'replicate'), ('.*', 'fsdp')]
    specs = sharding.state_specs(shapes, 2, rules, min_size=32)
    params = specs.params['Transformer']['encoderblock_0']
    # Largest dimension divisible by 2: kernel [16, 16] -> rows; qkv [16, heads 2, 8] -> rows.
    assert params['MlpBlock_3']['Dense_0']['kernel'] == P('fsdp', None)
    assert params['MultiHeadDotProductAttention_1']['query']['kernel'] == P('fsdp', None, None)
    assert params['LayerNorm_0']['scale'] == P()  # 16 elements < min_size
    assert specs.params['Transformer']['posembed_input']['pos_embedding'] == P()  # rule
    assert specs.params['head']['kernel'] == P('fsdp', None)  # [16, 4]: 4 would split too
    assert specs.step == P() and specs.rng == P()
    # SGD momentum (bfloat16) is placed as its parameter: the same names, the same shapes.
    leaves = jax.tree_util.tree_leaves_with_path(shapes.opt_state)
    momentum = {tree.array_name(p): x for p, x in leaves if x.ndim}
    assert momentum and all(x.dtype == jnp.bfloat16 for x in momentum.values())
    flat_specs = {tree.array_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(
        specs.opt_state, is_leaf=lambda x: isinstance(x, P))}
    mlp = [n for n in momentum if n.endswith('encoderblock_0/MlpBlock_3/Dense_0/kernel')]
    assert len(mlp) == 1 and flat_specs[mlp[0]] == P('fsdp', None)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes.params))
    with pytest.raises(ConfigError, match="how one of \\('replicate', 'fsdp'\\)"):
        sharding.check_rules([('.*', 'shard')])


def test_model_axis_splits_heads_and_mlp_hidden_beside_fsdp():
    rules = [('.*', 'fsdp')]
    tx = optim.create_optimizer(scale_worker.make_config())[0]
    for scanned in (False, True):  # a stacked layer axis leads; the rules count after it
        model = vit_jax.create_model('testing', num_classes=4, img_size=8, patch_size=4,
                                     embed_dim=16, num_heads=2, scan_layers=scanned)
        shapes = jax.eval_shape(lambda r, m=model: step.create_train_state(m, tx, r, (1, 8, 8, 3)),
                                jax.random.PRNGKey(0))
        placed = sharding.state_specs(shapes, 2, rules, 0, model_size=2, family=type(model))
        specs = tree.flatten(placed.params)
        moments = {tree.array_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(
            placed.opt_state, is_leaf=lambda x: isinstance(x, P))}
        block = 'Transformer/encoderblock' + ('' if scanned else '_0')
        layer = (None,) if scanned else ()
        expected = {  # Megatron: heads of q, k, v and out; MLP hidden of Dense_0 and Dense_1
            'MultiHeadDotProductAttention_1/query/kernel': P(*layer, 'fsdp', 'model', None),
            'MultiHeadDotProductAttention_1/value/bias': P(*layer, 'model', 'fsdp'),
            'MultiHeadDotProductAttention_1/out/kernel': P(*layer, 'model', None, 'fsdp'),
            'MlpBlock_3/Dense_0/kernel': P(*layer, 'fsdp', 'model'),
            'MlpBlock_3/Dense_0/bias': P(*layer, 'model'),
            'MlpBlock_3/Dense_1/kernel': P(*layer, 'model', 'fsdp'),
            'MlpBlock_3/Dense_1/bias': P(*layer, 'fsdp')}
        for name, spec in expected.items():
            assert specs[f'{block}/{name}'] == spec, (name, specs[f'{block}/{name}'])
            momentum = [s for n, s in moments.items() if n.endswith(f'{block}/{name}')]
            assert momentum == [spec], name
        assert specs['head/kernel'] == P('fsdp', None)  # not an attention or MLP array
    with pytest.raises(ConfigError, match=r"model axis \(4\) does not divide the heads \(2\) "
                                          r"of params/Transformer/encoderblock/.*/key/bias "
                                          r"\(1, 2, 8\); use a model size that divides"):
        sharding.state_specs(shapes, 1, rules, 0, model_size=4, family=type(model))


def test_a_model_axis_across_processes_is_refused():
    hosts = np.array([types.SimpleNamespace(process_index=i // 4) for i in range(8)])
    sharding.check_input_split(hosts.reshape(2, 2, 2))  # each model pair within one process
    sharding.check_input_split(hosts.reshape(1, 2, 4))
    with pytest.raises(ConfigError, match=r'model axis \(8 devices\) spans processes of 4 '
                                          r'devices each; use a model size that divides 4'):
        sharding.check_input_split(hosts.reshape(1, 1, 8))


@pytest.mark.slow
def test_remat_gives_the_same_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    grads = []
    for remat in (False, True):
        model = vit_jax.create_model('testing', num_classes=4, img_size=8, patch_size=4,
                                     depth=2, remat=remat)
        variables = model.init(jax.random.key(0), x)
        grads.append(jax.jit(jax.grad(lambda v, m=model: m.apply(
            v, x, train=True, rngs={'dropout': jax.random.key(2)}).sum()))(variables))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- equivalence


# Mixup / CutMix (batch mixed with its reverse: rows cross devices) and the EMA of the weights.
MIX_EMA = [('mixup_alpha', '0.8'), ('cutmix_alpha', '1.0'), ('label_smoothing', '0.1'),
           ('ema_decay', '0.9')]
TENSOR_PARALLEL = ('mesh', "[('data', 2), ('fsdp', 2), ('model', 2)]")


def test_one_vs_eight_devices_vs_fsdp_vs_accumulation(baseline, tmp_path):
    fsdp = ('mesh', "[('data', 4), ('fsdp', 2)]")
    runs = {'8-way data': [('mesh', "[('data', -1)]")],
            '4x2 data x fsdp': [fsdp],
            '4x2 + 4 micro-batches': [fsdp, ('accum_steps', '4')],
            '4x2 + mixup/cutmix + EMA': [fsdp, *MIX_EMA],
            '4x2 scanned layers': [fsdp, ('model.scan_layers', 'True')],
            '2x2x2 data x fsdp x model': [TENSOR_PARALLEL],
            '2x2x2 scanned layers': [TENSOR_PARALLEL, ('model.scan_layers', 'True')]}
    jobs = [{'workdir': str(tmp_path / str(i)), 'overrides': o,
             'params_out': str(tmp_path / f'{i}.npz')} for i, o in enumerate(runs.values())]
    results = run_worker({'jobs': jobs}, devices=8)
    assert [r['count'] for r in results] == [37] * len(runs)  # 37 examples, eval batches of 16 on 8
    # Mixing + EMA and a scanned model (other initial weights) each have their own 1-device
    # baseline.
    mixed = train_here(tmp_path / 'mixed', *MIX_EMA)
    scanned = train_here(tmp_path / 'scanned', ('model.scan_layers', 'True'))
    for i, name in enumerate(runs):
        one = mixed if 'EMA' in name else scanned if 'scanned' in name else baseline
        params = dict(np.load(tmp_path / f'{i}.npz'))
        assert params.keys() == one[1].keys()  # with EMA: 'ema/params/...' compared too
        diff = max_diff(one[1], params)
        record(f'1 device vs {name}: max abs param diff after 6 steps', diff)
        assert diff < 2e-5, (name, diff)
        for key in ('accuracy', 'ema_accuracy'):
            assert abs(results[i].get(key, 0) - one[0].get(key, 0)) < 1e-6


@pytest.mark.slow
def test_two_processes_equal_one(baseline, tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, WORKER, json.dumps({
            'coordinator': f'127.0.0.1:{port}', 'num_processes': 2, 'process_id': i,
            'workdir': str(tmp_path / 'run'), 'params_out': str(tmp_path / 'p.npz')})],
        env=worker_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    try:
        outs = [p.communicate(timeout=500)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert 'over 2 process(es)' in outs[0]
    result = json.loads(outs[0].split('RESULT ')[1].splitlines()[0])
    assert result['count'] == 37
    diff = max_diff(baseline[1], dict(np.load(tmp_path / 'p.npz')))
    record('1 process vs 2 processes (gloo): max abs param diff after 6 steps', diff)
    assert diff < 2e-5


def test_accumulation_on_one_device_equals_the_big_batch(baseline, tmp_path):
    _, params = train_here(tmp_path, ('accum_steps', '4'))
    diff = max_diff(baseline[1], params)
    record('1 device: 4 micro-batches vs one batch of 32: max abs param diff', diff)
    assert diff < 2e-5


# ----------------------------------------------------------------------------- never lose work


class Worker:
    """A worker process whose progress lines can be waited for."""

    def __init__(self, spec, devices=1, timeout=400):
        self.proc = subprocess.Popen([sys.executable, WORKER, json.dumps(spec)],
                                     env=worker_env(devices), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.timer = threading.Timer(timeout, self.proc.kill)
        self.timer.start()
        self.lines = []

    def wait_for_step(self, n):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(f'step {n}/'):
                return
        raise AssertionError(f'the worker ended before step {n}: {"".join(self.lines)[-3000:]}')

    def finish(self):
        self.lines += self.proc.stdout.readlines()
        self.proc.wait()
        self.timer.cancel()
        return ''.join(self.lines)


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes_bit_identically(baseline, tmp_path):
    worker = Worker({'workdir': str(tmp_path), 'overrides': [['checkpoint_every', '100']]})
    worker.wait_for_step(2)
    worker.proc.send_signal(signal.SIGTERM)
    out = worker.finish()
    assert worker.proc.returncode == 0, out[-3000:]
    result = json.loads(out.split('RESULT ')[1].splitlines()[0])
    saved = result['preempted_at_step']
    assert 2 <= saved < 6 and f'Preempted: saved step {saved}' in out
    assert os.path.isdir(tmp_path / 'checkpoints' / str(saved))
    _, params = train_here(tmp_path, ('checkpoint_every', '100'))  # resumes here
    assert max_diff(baseline[1], params) == 0.0


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def spawned():
    """A list to put workers in; whichever still run when the test ends are killed."""
    workers = []
    yield workers
    for worker in workers:
        worker.proc.kill()
        worker.timer.cancel()


def two_processes(spec, spawned):
    """Workers 0 and 1 of a 2-process run of `spec` (gloo collectives over 127.0.0.1)."""
    coordinator = f'127.0.0.1:{free_port()}'
    workers = [Worker({**spec, 'coordinator': coordinator, 'num_processes': 2, 'process_id': i},
                      timeout=300) for i in range(2)]
    spawned.extend(workers)
    return workers


def result_of(out):
    return json.loads(out.split('RESULT ')[1].splitlines()[0])


@pytest.mark.slow
@pytest.mark.parametrize('signalled', [(1,), (0, 1)])
def test_sigterm_on_two_processes_saves_one_step_then_resumes_bit_identically(tmp_path,
                                                                             signalled, spawned):
    # SIGTERM to process 1 alone (JAX's preemption service tells the others), or to both (what
    # SLURM, Kubernetes and TPU maintenance do): both agree on a step, save it, exit 0.
    overrides = [['total_steps', '40'], ['checkpoint_every', '100']]
    reference = two_processes({'workdir': str(tmp_path / 'reference'), 'overrides': overrides,
                               'params_out': str(tmp_path / 'reference.npz')}, spawned)
    outs = [w.finish() for w in reference]
    assert [w.proc.returncode for w in reference] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    workers = two_processes({'workdir': str(tmp_path / 'run'), 'overrides': overrides}, spawned)
    workers[0].wait_for_step(2)
    for i in signalled:
        workers[i].proc.send_signal(signal.SIGTERM)
    outs = [w.finish() for w in workers]
    assert [w.proc.returncode for w in workers] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    saved = {result_of(out)['preempted_at_step'] for out in outs}
    assert len(saved) == 1 and 2 <= min(saved) < 40, saved
    assert os.listdir(tmp_path / 'run' / 'checkpoints') == [str(min(saved))]
    resumed = two_processes({'workdir': str(tmp_path / 'run'), 'overrides': overrides,
                             'params_out': str(tmp_path / 'resumed.npz')}, spawned)
    outs = [w.finish() for w in resumed]
    assert [w.proc.returncode for w in resumed] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert f'Resumed from {tmp_path / "run" / "checkpoints"} at step {min(saved)}' in outs[0]
    diff = max_diff(dict(np.load(tmp_path / 'reference.npz')),
                    dict(np.load(tmp_path / 'resumed.npz')))
    assert diff == 0.0


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    # With dropout and mixing: the RNG key is part of what resumes exactly; the EMA too.
    overrides = [('total_steps', '12'), ('checkpoint_every', '1'), ('model.drop_rate', '0.1'),
                 *MIX_EMA]
    _, reference = train_here(tmp_path / 'reference', *overrides)
    kills = sorted(random.Random(7).sample(range(2, 12), 3))
    for kill in kills:
        worker = Worker({'workdir': str(tmp_path / 'run'), 'overrides': overrides})
        worker.wait_for_step(kill)
        worker.proc.send_signal(signal.SIGKILL)
        worker.finish()
    result, params = train_here(tmp_path / 'run', *overrides)
    record(f'SIGKILL at steps {kills} then resume: max abs param diff vs uninterrupted',
           max_diff(reference, params))
    assert max_diff(reference, params) == 0.0
    assert result['count'] == 37


@pytest.mark.slow
def test_sigkill_on_2x2x2_data_fsdp_model_then_resume_is_bit_identical(tmp_path):
    overrides = [TENSOR_PARALLEL, ('total_steps', '10'), ('checkpoint_every', '1'),
                 ('model.drop_rate', '0.1'), *MIX_EMA]
    kill = random.Random(3).randrange(2, 9)
    worker = Worker({'workdir': str(tmp_path / 'run'), 'overrides': overrides}, devices=8)
    worker.wait_for_step(kill)
    worker.proc.send_signal(signal.SIGKILL)
    worker.finish()
    jobs = [{'workdir': str(tmp_path / name), 'overrides': overrides,
             'params_out': str(tmp_path / f'{name}.npz')} for name in ('reference', 'run')]
    results = run_worker({'jobs': jobs}, devices=8)
    assert [r['count'] for r in results] == [37, 37]
    diff = max_diff(dict(np.load(tmp_path / 'reference.npz')), dict(np.load(tmp_path / 'run.npz')))
    record(f'2x2x2 data x fsdp x model, SIGKILL at step {kill} then resume: max abs param diff '
           f'vs uninterrupted', diff)
    assert diff == 0.0


def largest_file(directory):
    files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(baseline, tmp_path, caplog):
    train_here(tmp_path, ('checkpoint_every', '3'))
    data_file = largest_file(tmp_path / 'checkpoints' / '6' / 'state')
    with open(data_file, 'r+b') as f:
        f.truncate(os.path.getsize(data_file) // 2)
    # A save cut short at step 7 (orbax's temporary directory) is never taken as the latest.
    os.makedirs(tmp_path / 'checkpoints' / '7.orbax-checkpoint-tmp-99' / 'state')
    with caplog.at_level(logging.WARNING):
        _, params = train_here(tmp_path, ('checkpoint_every', '3'))
    assert 'checkpoint 6 in' in caplog.text and 'using step 3' in caplog.text
    assert os.path.isdir(tmp_path / 'checkpoints' / 'corrupt-6')
    assert max_diff(baseline[1], params) == 0.0  # steps 4-6 again, from the data position


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    make = data()

    def poisoned(config, start):  # NaN images from step 4 (examples 96 on) onwards
        train_iter, make_eval, info = make(config, start)

        def batches(seen=start):
            for batch in train_iter:
                if seen >= 3 * config.batch:
                    batch = {**batch, 'image': np.full_like(batch['image'], np.nan)}
                seen += config.batch
                yield batch

        return batches(), make_eval, info

    with pytest.raises(TrainingError, match='non-finite loss \\(nan\\).* at step 4; lower '
                                            '--config.base_lr.*last good checkpoint \\(step 2\\)'):
        train_here(tmp_path, ('checkpoint_every', '2'), ('progress_every', '100'),
                   datasets=poisoned)
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
    params = scale_worker.final_params(scale_worker.make_config(), str(tmp_path))
    assert all(np.isfinite(v).all() for v in params.values())


@pytest.mark.slow
def test_workdir_of_another_model_is_a_clear_error(tmp_path):
    train_here(tmp_path, ('total_steps', '2'))
    with pytest.raises(ConfigError, match=r"holds a run of another config \(model.embed_dim=16 "
                                          r"there, 8 here\)"):
        train_here(tmp_path, ('total_steps', '4'), ('model.embed_dim', '8'))


# ----------------------------------------------------------------------------- data position


def test_array_data_resumes_at_its_position_on_any_process_count(monkeypatch):
    config = scale_worker.make_config()
    full = [next(it) for it in [data()(config, 0)[0]] for _ in range(5)][-1]
    resumed = next(data()(config, 4 * config.batch)[0])
    np.testing.assert_array_equal(full['image'], resumed['image'])
    halves, masks = [], 0
    for index in range(2):
        monkeypatch.setattr(jax, 'process_index', lambda i=index: i)
        monkeypatch.setattr(jax, 'process_count', lambda: 2)
        train_iter, make_eval, _ = data()(config, 4 * config.batch)
        halves.append(next(train_iter)['label'])
        masks += sum(b['mask'].sum() for b in make_eval())
    np.testing.assert_array_equal(np.concatenate(halves), full['label'])
    assert masks == 37


def test_tfds_pipeline_resumes_at_its_position(digits_config):
    from vit_jax.data import create_datasets
    config = digits_config(('batch', '64'), ('shuffle_buffer', '200'))
    start = time.monotonic()
    stream = create_datasets(config)[0]
    batches = [next(stream) for _ in range(25)]  # 25 * 64 > 1437: into the second epoch
    resumed = create_datasets(config, start=24 * 64)[0]
    assert time.monotonic() - start < 60
    np.testing.assert_array_equal(next(resumed)['image'], batches[24]['image'])
