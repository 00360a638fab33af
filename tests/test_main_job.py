"""The README's main job, as a user runs it (slow: about 2.5 minutes; `pytest -m slow`)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_main_job_reaches_97_percent_on_held_out_digits(tmp_path, repo):
    out = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', '--config=configs/digits.py',
         f'--workdir={tmp_path}', f'--config.tfds_data_dir={tmp_path / "tfds"}'],
        capture_output=True, text=True, timeout=600, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'Done: eval accuracy' in out.stdout
    final = json.loads((tmp_path / 'final_metrics.json').read_text())
    assert final['count'] == 360
    assert final['accuracy'] >= 0.97, final
