"""Training runs whose workdir is a bucket (a real GCS emulator, tests/gcs_emulator.py): the main
job start to finish with only `STORAGE_EMULATOR_HOST` set, a relaunch that resumes, a relaunch
with another config refused with every object unchanged, `init_from` and `load_run` from a
bucket, a SIGKILL during a save then a bit-exact resume, and two processes on one bucket."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
import scale_worker
from test_scale import Worker, max_diff, train_here, two_processes

from vit_jax import storage, tree
from vit_jax.errors import WorkdirError
from vit_jax.train.workdir import Workdir

DIGITS = ['--config=configs/digits.py', '--config.total_steps=12', '--config.warmup_steps=2',
          '--config.checkpoint_every=6', '--config.eval_every=0', '--config.batch_eval=90']


def objects(gcs, bucket: str) -> dict[str, str]:
    """`{object name: generation}` of every object in `bucket` (gs://name)."""
    url = f'{gcs.url}/storage/v1/b/{bucket.removeprefix("gs://")}/o'
    with urllib.request.urlopen(url, timeout=10) as response:
        return {o['name']: o['generation'] for o in json.load(response).get('items', [])}


def read(gcs, bucket: str, name: str) -> str:
    """The contents of object `name` in `bucket`."""
    url = (f'{gcs.url}/download/storage/v1/b/{bucket.removeprefix("gs://")}/o/'
           f'{urllib.parse.quote(name, safe="")}?alt=media')
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def main_job(gcs, workdir: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    """`python -m vit_jax.main` with the digits recipe cut short, and of the emulator only
    `STORAGE_EMULATOR_HOST` in its environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('TENSORSTORE_', 'CLOUD_STORAGE', 'GCSFS_', 'EPATH_', 'GOOGLE_'))}
    return subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', *DIGITS, f'--workdir={workdir}', *args],
        env={**env, **gcs.env}, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_main_job_runs_in_a_bucket_resumes_and_refuses_another_config(
        gcs, digits_data_dir, repo, tmp_path):
    gcs.start()
    bucket = gcs.bucket()
    workdir = f'{bucket}/run'
    data = f'--config.tfds_data_dir={digits_data_dir}'
    first = main_job(gcs, workdir, data, cwd=str(tmp_path))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert f'Checkpoints: {workdir}/checkpoints' in first.stdout
    assert os.listdir(tmp_path) == []  # nothing local: no ./gs:/ folder
    saved = objects(gcs, bucket)
    names = {n.removeprefix('run/') for n in saved}
    for name in ('config.json', 'classes.txt', 'runs.jsonl', 'metrics.jsonl',
                 'final_metrics.json', 'weights.npz', 'checkpoints/6/commit_success.txt',
                 'checkpoints/12/commit_success.txt'):
        assert name in names, sorted(names)
    assert 'lock' not in names  # released at exit
    assert any(n.startswith('tensorboard/events.out.tfevents') for n in names)

    again = main_job(gcs, workdir, data, cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f'Resumed from {workdir}/checkpoints at step 12' in again.stdout
    launches = [json.loads(line) for line in read(gcs, bucket, 'run/runs.jsonl').splitlines()]
    assert [entry['start_step'] for entry in launches] == [0, 12]

    before = objects(gcs, bucket)
    refused = main_job(gcs, workdir, data, '--config.base_lr=0.5', cwd=str(tmp_path))
    assert refused.returncode == 2
    error = [line for line in refused.stderr.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'holds a run of another config (base_lr=' in error[0], \
        refused.stderr[-2000:]
    assert 'Traceback' not in refused.stderr
    assert objects(gcs, bucket) == before  # every name and generation


def test_the_main_job_runs_in_s3_and_resumes(s3_env, digits_data_dir, tmp_path):
    bucket = s3_env.bucket()
    workdir = f'{bucket}/run'
    env = {k: v for k, v in os.environ.items() if not k.startswith('EPATH_')}

    def launch() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, '-m', 'vit_jax.main', *DIGITS, f'--workdir={workdir}',
             f'--config.tfds_data_dir={digits_data_dir}'],
            env={**env, **s3_env.env}, cwd=str(tmp_path), capture_output=True, text=True,
            timeout=600)

    first = launch()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert os.listdir(tmp_path) == []  # nothing local: no ./s3:/ folder
    assert not [line for line in first.stderr.splitlines() if '.aws/' in line]
    names = {name.removeprefix(f'{workdir}/')
             for name in storage.files_below(Workdir(workdir).file(''))}
    for name in ('config.json', 'runs.jsonl', 'metrics.jsonl', 'weights.npz',
                 'checkpoints/6/commit_success.txt', 'checkpoints/12/commit_success.txt'):
        assert name in names, sorted(names)
    assert not [name for name in names if 'orbax-checkpoint-tmp' in name]

    again = launch()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f'Resumed from {workdir}/checkpoints at step 12' in again.stdout
    local = tmp_path / 'local'
    reference = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', *DIGITS, f'--workdir={local}',
         f'--config.tfds_data_dir={digits_data_dir}'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    remote = tree.flatten(Workdir(workdir).load_run()[1])
    assert max_diff({k: np.asarray(v) for k, v in tree.flatten(
        Workdir(str(local)).load_run()[1]).items()},
        {k: np.asarray(v) for k, v in remote.items()}) == 0.0


def test_load_run_and_init_from_read_a_bucket(gcs_env, tmp_path):
    bucket = gcs_env.bucket()
    overrides = [('checkpoint_every', '3'), ('ema_decay', '0.5')]
    _, params = train_here(f'{bucket}/run', *overrides)
    run = Workdir(f'{bucket}/run')
    assert [line['start_step'] for line in map(
        json.loads, run.file('runs.jsonl').read_text().splitlines())] == [0]
    _, variables, _, classes = run.load_run()
    assert classes == tuple(str(i) for i in range(scale_worker.NUM_CLASSES))
    flat = tree.flatten(variables)
    assert max_diff({k: v for k, v in params.items() if not k.startswith('ema/')},
                    {k: np.asarray(v) for k, v in flat.items()}) == 0.0
    exported = dict(np.load(run.weights_file.open('rb')))
    assert set(exported) == {k.removeprefix('params/') for k in flat}
    _, average, _, _ = run.load_run(ema=True)
    assert max_diff({k: v for k, v in params.items() if k.startswith('ema/')},
                    {f'ema/{k}': np.asarray(v) for k, v in tree.flatten(average).items()}) == 0.0
    # A local run starting from the bucket run's variables.
    result, started = train_here(tmp_path / 'local', ('total_steps', '2'),
                                 ('init_from', f'{bucket}/run'), *overrides)
    assert result['count'] == scale_worker.NUM_EVAL
    assert started.keys() == params.keys()


@pytest.mark.slow
def test_sigkill_during_saves_in_a_bucket_then_resume_is_bit_identical(gcs_env, tmp_path):
    bucket = gcs_env.bucket()
    overrides = [('total_steps', '12'), ('checkpoint_every', '1'), ('model.drop_rate', '0.1')]
    _, reference = train_here(tmp_path / 'reference', *overrides)
    for kill in (3, 8):
        worker = Worker({'workdir': f'{bucket}/run', 'overrides': overrides})
        worker.wait_for_step(kill)
        worker.proc.send_signal(signal.SIGKILL)
        worker.finish()
    _, params = train_here(f'{bucket}/run', *overrides)
    assert max_diff(reference, params) == 0.0


@pytest.mark.slow
def test_two_processes_on_one_bucket_workdir_equal_one(gcs_env, tmp_path):
    bucket = gcs_env.bucket()
    _, reference = train_here(tmp_path / 'reference')
    spawned: list = []
    try:
        workers = two_processes({'workdir': f'{bucket}/run',
                                 'params_out': str(tmp_path / 'two.npz')}, spawned)
        outs = [w.finish() for w in workers]
    finally:
        for w in spawned:
            w.proc.kill()
    assert [w.proc.returncode for w in workers] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert max_diff(reference, dict(np.load(tmp_path / 'two.npz'))) < 1e-6


@pytest.mark.slow
def test_the_store_gone_mid_run_is_one_line_and_the_same_command_resumes(
        gcs, digits_data_dir, tmp_path):
    gcs.start()
    bucket = gcs.bucket()
    command = [sys.executable, '-m', 'vit_jax.main', *DIGITS, f'--workdir={bucket}/run',
               f'--config.tfds_data_dir={digits_data_dir}', '--config.total_steps=400',
               '--config.checkpoint_every=5', '--config.progress_every=5']
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('TENSORSTORE_', 'CLOUD_STORAGE', 'GCSFS_', 'EPATH_', 'GOOGLE_'))}
    env.update(gcs.env)
    run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        for line in run.stdout:
            if line.startswith('step 30/'):
                break
        gcs.stop()  # the network goes away while the run saves every 5 steps
        _, stderr = run.communicate(timeout=400)
    finally:
        run.kill()
        gcs.start()
    assert run.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr
    assert re.match(rf'error: (saving a checkpoint in {bucket}/run/checkpoints failed|could not '
                    rf'renew the lease on {bucket}/run/lock) .*the same command', errors[0]), errors
    saved = int(re.search(r'step (\d+)', errors[0].split('resume from')[-1]).group(1)) \
        if 'resume from' in errors[0] else None
    resumed = subprocess.run([*command[:-3], '--config.total_steps=40'], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(re.search(r'Resumed from .* at step (\d+)', resumed.stdout).group(1))
    assert start > 0 and (saved is None or start == saved)
    assert 'Done: eval accuracy' in resumed.stdout


def test_a_workdir_in_a_missing_bucket_is_one_line(gcs_env):
    with pytest.raises(WorkdirError, match=r'^cannot write gs://no-such-bucket-4b1d/run: no such '
                                           r'bucket; create the bucket or fix its name$'):
        train_here('gs://no-such-bucket-4b1d/run')


@pytest.mark.parametrize('prefix, message', [
    ('anonymous', 'no credentials for the store; run `gcloud auth application-default login` or '
                  'set GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for an emulator)'),
    ('denied', 'permission denied; grant this account access, or use a --workdir this user may '
               'write to'),
    pytest.param('quota', 'the store refused for quota or rate; wait, or raise the quota',
                 marks=pytest.mark.slow),  # gcsfs retries a 429 for about a minute first
])
def test_a_bucket_that_refuses_writes_is_one_line_before_anything_is_built(gcs_env, prefix,
                                                                          message):
    bucket = gcs_env.bucket(prefix)
    with pytest.raises(WorkdirError, match=rf'^cannot write {bucket}/run: {re.escape(message)}$'):
        train_here(f'{bucket}/run')
