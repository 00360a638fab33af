"""Every notebook runs top to bottom (small settings via VIT_JAX_NOTEBOOK_SMALL=1) and fails on
any error. Code cells run in order in one namespace, as a kernel would; the install cell's
`%pip` / `!` lines are shell commands for Colab and are skipped (the package is installed)."""

import json
import os
import time

import matplotlib
import matplotlib.pyplot as plt
import pytest
from conftest import REPO

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, 'notebooks')) if f.endswith('.ipynb'))


def code_cells(path: str) -> list[str]:
    with open(path) as f:
        notebook = json.load(f)
    cells = []
    for cell in notebook['cells']:
        if cell['cell_type'] == 'code':
            source = ''.join(cell['source'])
            cells.append('\n'.join(line for line in source.splitlines()
                                   if not line.lstrip().startswith(('%', '!'))))
    return cells


def test_notebooks_are_listed_and_install_first():
    assert NOTEBOOKS == ['analysis.ipynb', 'vit_jax.ipynb']
    for name in NOTEBOOKS:
        with open(os.path.join(REPO, 'notebooks', name)) as f:
            first = next(c for c in json.load(f)['cells'] if c['cell_type'] == 'code')
        assert 'pip install' in ''.join(first['source'])


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    matplotlib.use('Agg')
    monkeypatch.setenv('VIT_JAX_NOTEBOOK_SMALL', '1')
    monkeypatch.chdir(tmp_path)
    namespace = {'__name__': '__main__'}
    start = time.perf_counter()
    for i, source in enumerate(code_cells(os.path.join(REPO, 'notebooks', name))):
        try:
            exec(compile(source, f'{name}[cell {i}]', 'exec'), namespace)
        except Exception as e:
            raise AssertionError(f'{name}, code cell {i} failed: {type(e).__name__}: {e}') from e
    print(f'{name}: {time.perf_counter() - start:.1f}s')
    plt.close('all')
