"""Every command line on a run in a bucket (issue 24): predict, export, fewshot, analysis and
ablate read `--workdir=gs://...` and write `--out=gs://...` with only `STORAGE_EMULATOR_HOST` set,
print the URL as given and create no `gs:` folder; a bad scheme or a missing bucket is one line."""

import os
import pathlib
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from vit_jax import export, predict, storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_env(gcs) -> dict[str, str]:
    """This process's environment with the emulator's address alone (none of the variables
    vit_jax.storage derives from it)."""
    env = {k: v for k, v in os.environ.items() if k not in gcs.client_env}
    return {**env, **gcs.env, 'PYTHONPATH': REPO}


def run_cli(gcs, cwd, module, *args):
    """`python -m vit_jax.MODULE ARGS` in `cwd` with `user_env`; asserts no `gs:` folder."""
    result = subprocess.run([sys.executable, '-m', f'vit_jax.{module}', *map(str, args)],
                            capture_output=True, text=True, cwd=cwd, env=user_env(gcs),
                            timeout=300)
    assert not [p for p in os.listdir(cwd) if p.startswith(('gs:', 's3:', 'hdfs:'))]
    return result


def download(source: pathlib.PurePath, target: pathlib.Path) -> None:
    """Copies the tree `source` (an epath in a bucket) into the local folder `target`."""
    for item in source.iterdir():
        if item.is_dir():
            download(item, target / item.name)
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / item.name).write_bytes(item.read_bytes())


@pytest.fixture(scope='module')
def bucket_run(gcs, config_spec, digits_data_dir, tmp_path_factory):
    """`(gs:// workdir, local copy of it, scratch cwd, an image)`: a tiny digits run trained
    once into a bucket by `python -m vit_jax.main`, checkpointed at its end."""
    gcs.start()
    workdir = f'{gcs.bucket()}/run'
    cwd = tmp_path_factory.mktemp('cwd')
    result = run_cli(gcs, cwd, 'main', f'--config={config_spec("digits.py")}',
                     f'--workdir={workdir}', f'--config.tfds_data_dir={digits_data_dir}',
                     '--config.total_steps=8', '--config.warmup_steps=2',
                     '--config.eval_every=0', '--config.checkpoint_every=0')
    assert result.returncode == 0, result.stderr[-3000:]
    saved = os.environ.copy()
    os.environ.update(gcs.client_env)
    try:
        local = tmp_path_factory.mktemp('local_copy')
        download(storage.path(workdir), local)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    image = cwd / 'digit.png'
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    return workdir, local, cwd, image


@pytest.fixture
def bucket(gcs_env):
    """`bucket(url)`: the object at `url` as an epath, read afresh (gcsfs caches listings)."""
    import fsspec

    def path(url: str):
        fsspec.filesystem('gs', finalize_on_close=True).invalidate_cache()
        return storage.path(url)
    return path


def top_classes(stdout: str) -> list[str]:
    return re.findall(r'^  1\. (.+) \(', stdout, re.M)


def test_predict_reads_the_bucket_run_as_its_local_copy(gcs, bucket_run, capsys):
    workdir, local, cwd, image = bucket_run
    result = run_cli(gcs, cwd, 'predict', f'--workdir={workdir}', image)
    assert result.returncode == 0, result.stderr[-3000:]
    assert predict.main([f'--workdir={local}', str(image)]) == 0
    expected = top_classes(capsys.readouterr().out)
    assert expected and top_classes(result.stdout) == expected


@pytest.mark.parametrize('fmt', ['stablehlo', pytest.param('tflite', marks=pytest.mark.slow)])
def test_export_to_the_bucket_equals_the_local_export(gcs, bucket_run, fmt, tmp_path, bucket):
    workdir, local, cwd, _ = bucket_run
    out = f'{workdir}/export/model.{fmt}'
    result = run_cli(gcs, cwd, 'export', f'--workdir={workdir}', f'--format={fmt}',
                     f'--out={out}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'wrote {out} ({fmt})' in result.stdout
    assert export.main([f'--workdir={local}', f'--format={fmt}',
                        f'--out={tmp_path / "model"}']) == 0
    remote, local_bytes = bucket(out).read_bytes(), (tmp_path / 'model').read_bytes()
    if fmt == 'tflite':
        assert remote == local_bytes
    else:  # the serialised module carries source locations: compare what it computes
        import jax

        x = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
        np.testing.assert_array_equal(jax.export.deserialize(remote).call(x),
                                      jax.export.deserialize(local_bytes).call(x))


@pytest.mark.slow
def test_savedmodel_is_uploaded_whole(gcs, bucket_run, tmp_path, bucket):
    workdir, _, cwd, _ = bucket_run
    out = f'{workdir}/export/savedmodel'
    result = run_cli(gcs, cwd, 'export', f'--workdir={workdir}', '--format=savedmodel',
                     f'--out={out}')
    assert result.returncode == 0, result.stderr[-3000:]
    download(bucket(out), tmp_path / 'savedmodel')
    names = {p.relative_to(tmp_path / 'savedmodel').as_posix()
             for p in (tmp_path / 'savedmodel').rglob('*') if p.is_file()}
    assert 'saved_model.pb' in names and any(n.startswith('variables/') for n in names)


@pytest.mark.parametrize('module, args', [
    ('export', ['--format=tflite', '--out=hdfs://x/model.tflite']),
    ('analysis', ['--out=hdfs://x/analysis']),
])
def test_unknown_scheme_of_out_is_one_line(gcs, bucket_run, module, args):
    workdir, _, cwd, _ = bucket_run
    result = run_cli(gcs, cwd, module, f'--workdir={workdir}', *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith('error: hdfs://x/')
    assert 'unknown scheme hdfs://' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('module, args', [
    ('predict', ['digit.png']),
    ('export', ['--format=stablehlo', '--out=model.stablehlo']),
    ('fewshot', []),
    ('analysis', ['--out=analysis']),
])
def test_missing_bucket_is_one_line(gcs, bucket_run, module, args):
    _, _, cwd, _ = bucket_run
    result = run_cli(gcs, cwd, module, '--workdir=gs://no-such-bucket/run', *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'error: cannot read gs://no-such-bucket/run: no such bucket; create the bucket or fix '
        'its name')


def test_export_to_a_missing_bucket_is_one_line(gcs, bucket_run):
    workdir, _, cwd, _ = bucket_run
    result = run_cli(gcs, cwd, 'export', f'--workdir={workdir}', '--format=stablehlo',
                     '--out=gs://no-such-bucket/model.stablehlo')
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        'error: cannot write gs://no-such-bucket/model.stablehlo: no such bucket; create the '
        'bucket or fix its name')


@pytest.mark.slow
def test_analysis_writes_its_files_to_the_bucket(gcs, bucket_run, bucket):
    workdir, _, cwd, image = bucket_run
    out = f'{workdir}/analysis'
    result = run_cli(gcs, cwd, 'analysis', f'--workdir={workdir}', f'--out={out}',
                     f'--images={image}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f'to {out}')
    names = sorted(p.name for p in bucket(out).iterdir())
    assert names == ['analysis.json', 'attention_digit.png', 'attention_distance.png',
                     'patch_filters.png', 'position_similarity.png']
    assert bucket(f'{out}/attention_distance.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_fewshot_reads_the_bucket_run(gcs, bucket_run):
    workdir, _, cwd, _ = bucket_run
    result = run_cli(gcs, cwd, 'fewshot', f'--workdir={workdir}', '--shots=1,2')
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.findall(r'^fewshot_k(\d) = ', result.stdout, re.M) == ['1', '2']


def test_no_credentials_for_the_store_is_one_line_saying_how_to_give_them(s3, tmp_path):
    """No AWS credentials anywhere (no variables, no ~/.aws, no instance metadata): training
    into an `s3://` workdir and reading a run from one each stop with one line."""
    bucket = s3.bucket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('AWS_', 'EPATH_'))}
    env.update(HOME=str(tmp_path), AWS_ENDPOINT_URL=s3.url, AWS_EC2_METADATA_DISABLED='true',
               PYTHONPATH=REPO)
    commands = [['vit_jax.main', '--config=configs/digits.py', f'--workdir={bucket}/run'],
                ['vit_jax.predict', f'--workdir={bucket}/run', str(tmp_path / 'image.png')]]
    for command in commands:
        result = subprocess.run([sys.executable, '-m', *command], capture_output=True,
                                text=True, cwd=tmp_path, env=env, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert re.fullmatch(
            rf'error: cannot (write|read) {bucket}/run\S*: no credentials for the store; set '
            r'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE \(AWS_ENDPOINT_URL '
            r'for another S3 endpoint\)', result.stderr.strip()), result.stderr
    listing = urllib.request.urlopen(f'{s3.url}/{bucket.removeprefix("s3://")}?list-type=2',
                                     timeout=10).read().decode()
    assert '<Key>' not in listing  # nothing written
