"""The install: versions equal to the tested set in constraints.txt, notebooks that install
from the repository named in pyproject.toml, and a wheel that works on its own in a fresh venv."""

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

PIN = re.compile(r'^([A-Za-z0-9_.\-]+)==([^\s;#]+)')


def constraints() -> dict[str, str]:
    """Package name (normalised) -> exact version, from constraints.txt."""
    pins = {}
    with open(os.path.join(REPO, 'constraints.txt')) as f:
        for line in f:
            if m := PIN.match(line.strip()):
                pins[re.sub(r'[-_.]+', '-', m[1]).lower()] = m[2]
    return pins


def test_installed_versions_match_constraints():
    pins = constraints()
    assert {'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy'} <= set(pins)
    drift = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = importlib.metadata.version(name).split('+')[0]
        except importlib.metadata.PackageNotFoundError:
            continue  # constraints bound what is installed; they do not require it
        if installed != pinned:
            drift.append(f'{name} {installed} (constraints.txt: {pinned})')
    assert not drift, (
        f'installed versions differ from the tested set: {"; ".join(drift)}. Reinstall it with '
        f'`rm -rf .venv && bash scripts/setup.sh test`, or after the suite passes on the new '
        f'versions record them with `bash scripts/update_constraints.sh`.')


def test_notebooks_install_from_the_repository_of_pyproject():
    with open(os.path.join(REPO, 'pyproject.toml')) as f:
        (repository,) = re.findall(r'^Repository = "(.+)"$', f.read(), re.MULTILINE)
    for name in ('vit_jax.ipynb', 'analysis.ipynb'):
        with open(os.path.join(REPO, 'notebooks', name)) as f:
            cell = ''.join(next(c for c in json.load(f)['cells']
                                if c['cell_type'] == 'code')['source'])
        assert f"REPOSITORY = 'git+{repository}'" in cell, name


def run(args: list[str], **kwargs) -> str:
    out = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f'{args[:4]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}'
    return out.stdout + out.stderr


@pytest.mark.slow
def test_wheel_runs_notebook_and_main_job_in_a_fresh_venv(tmp_path):
    """Builds the wheel, then in a new venv with nothing installed: the notebook's install cell
    installs the wheel (with the tested versions), the notebook runs to the end, and the main job
    trains from the packaged digits config outside the repository."""
    run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
         '--wheel-dir', str(tmp_path / 'dist'), REPO])
    (wheel,) = (tmp_path / 'dist').iterdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ('vit_jax/configs/digits.py', 'vit_jax/configs/vit.py',
                   'vit_jax/data/imagenet2012_classes.txt', 'vit_jax/data/digits.py'):
        assert needed in names, f'{needed} missing from {wheel.name}'
    venv = tmp_path / 'venv'
    run([sys.executable, '-m', 'venv', str(venv)])
    python = str(venv / 'bin' / 'python')
    env = {**os.environ, 'VIT_JAX_SOURCE': str(wheel), 'VIT_JAX_NOTEBOOK_SMALL': '1',
           'PIP_CONSTRAINT': os.path.join(REPO, 'constraints.txt'), 'MPLBACKEND': 'Agg',
           'PYTHONPATH': ''}
    work = tmp_path / 'work'
    work.mkdir()
    notebook = os.path.join(REPO, 'notebooks', 'vit_jax.ipynb')
    runner = os.path.join(REPO, 'tests', 'notebook_cells.py')
    run([python, runner, notebook, '--last', '0'], cwd=work, env=env)
    run([python, '-c', f'import vit_jax; assert vit_jax.__file__.startswith({str(venv)!r})'],
        cwd=work, env=env)
    run([python, runner, notebook, '--first', '1'], cwd=work, env=env)
    version = run([python, '-m', 'vit_jax.main', '--version'], cwd=work, env=env)
    assert version.strip() == f'vit_jax {importlib.metadata.version("vit_jax")}'
    out = run([python, '-m', 'vit_jax.main', '--config=configs/digits.py', '--workdir=run',
               '--config.total_steps=20', '--config.warmup_steps=5', '--config.eval_every=0',
               '--config.progress_every=10'],
              cwd=work, env=env)
    assert 'Done: eval accuracy' in out
    assert (work / 'run' / 'weights.npz').is_file()


def test_the_cuda_plugin_adds_nothing_to_stderr_without_a_gpu(repo):
    # The test extra installs JAX's CUDA plugin (benchmark.py --aot), whose libraries note on
    # stderr that this machine has no GPU as jax is imported and its plugins registered.
    assert importlib.util.find_spec('jax_plugins.xla_cuda12') is not None
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    for args in (['-m', 'vit_jax.main', '--version'],
                 ['-c', 'import vit_jax, jax; print(jax.devices()[0].platform)']):
        out = subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=120)
        assert (out.returncode, out.stderr) == (0, ''), out.stderr[-2000:]
