"""The docs site builds with `mkdocs build --strict`: no broken link or anchor, no page left out
of the nav, and a docstring on every public module, function and class (docs/gen_pages.py)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import griffe
from conftest import REPO


def test_docs_build_strict(tmp_path):
    site = tmp_path / 'site'
    env = {**os.environ, 'DISABLE_MKDOCS_2_WARNING': 'true', 'NO_MKDOCS_2_WARNING': '1'}
    out = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir',
                          str(site)], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f'mkdocs build --strict failed:\n{out.stderr[-5000:]}'
    # The pages moved from the README and the generated API pages are all there.
    for page in ('getting-started', 'architecture', 'extending', 'bad-input', 'results/benchmarks',
                 'results/fits', 'results/tests', 'reference/vit_jax/train/loop'):
        assert (site / page / 'index.html').is_file(), page
    bad_input = (site / 'bad-input' / 'index.html').read_text()
    assert '<td>104</td>' in bad_input and '<td>92c</td>' in bad_input


def test_a_missing_docstring_is_a_warning():
    spec = importlib.util.spec_from_file_location('gen_pages', os.path.join(REPO, 'docs',
                                                                            'gen_pages.py'))
    gen_pages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_pages)
    code = ('from typing import Any\n'
            'def documented():\n    """Does a thing."""\n'
            'def bare(): pass\n'
            'class Bare: pass\n'
            'def _private(): pass\n')
    module = griffe.visit('m', filepath=pathlib.Path('m.py'), code=code)
    assert gen_pages.undocumented(module) == ['m', 'm.bare', 'm.Bare']
    module = griffe.visit('m', filepath=pathlib.Path('m.py'), code='"""A module."""\n' + code)
    assert gen_pages.undocumented(module) == ['m.bare', 'm.Bare']


def test_lists_read_as_on_github():
    spec = importlib.util.spec_from_file_location('hooks', os.path.join(REPO, 'docs', 'hooks.py'))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = 'A paragraph:\n- one\n  more of one\n\n  ```bash\n  x\n  ```\n- two\n\n```\n- code\n```'
    assert hooks.github_lists(text) == (
        'A paragraph:\n\n- one\n    more of one\n\n    ```bash\n    x\n    ```\n- two\n\n'
        '```\n- code\n```')
