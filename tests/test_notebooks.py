"""Every notebook runs top to bottom (small settings via VIT_JAX_NOTEBOOK_SMALL=1) and fails on
any error. Code cells run in order in one namespace, as a kernel would; the install cell finds
vit_jax installed and does nothing."""

import json
import os
import time

import matplotlib
import matplotlib.pyplot as plt
import pytest
from conftest import REPO
from notebook_cells import run_cells

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, 'notebooks')) if f.endswith('.ipynb'))


def test_notebooks_are_listed_and_install_first():
    assert NOTEBOOKS == ['analysis.ipynb', 'vit_jax.ipynb']
    for name in NOTEBOOKS:
        with open(os.path.join(REPO, 'notebooks', name)) as f:
            first = next(c for c in json.load(f)['cells'] if c['cell_type'] == 'code')
        assert 'pip' in ''.join(first['source']) and 'install' in ''.join(first['source'])


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    matplotlib.use('Agg')
    monkeypatch.setenv('VIT_JAX_NOTEBOOK_SMALL', '1')
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    run_cells(os.path.join(REPO, 'notebooks', name))
    print(f'{name}: {time.perf_counter() - start:.1f}s')
    plt.close('all')
