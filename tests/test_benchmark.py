"""scripts/benchmark.py on CPU: a tiny vit_jax model beside a tiny timm model, where neither
TensorFlow nor ml_collections can be imported (as on the GPU machine)."""

import os
import subprocess
import sys

# Runs the script with tensorflow and ml_collections made unimportable.
RUN = """
import runpy, sys
sys.modules['tensorflow'] = sys.modules['ml_collections'] = None
sys.argv = ['benchmark.py'] + sys.argv[1:]
runpy.run_path('scripts/benchmark.py', run_name='__main__')
"""


def test_benchmark_prints_the_side_by_side_table(repo):
    args = ['--models=testing=vit_tiny_patch16_224', '--mode=train,infer', '--img_size=32',
            '--batch=2', '--steps=2', '--warmup=1', '--dtype=float32']
    env = {**os.environ, 'PYTHONPATH': repo, 'JAX_PLATFORMS': 'cpu', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-c', RUN, *args], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith('| model |'))
    assert [c.strip() for c in header.strip('|').split('|')] == [
        'model', 'mode', 'batch', 'framework', 'img/s', 'ours/timm', 'GFLOP/img', 'TFLOP/s',
        'of peak', 'peak GiB', 'XLA GiB']
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in lines
            if line.startswith('| testing |') or line.startswith('| vit_tiny_patch16_224 |')]
    assert [(r[1], r[3]) for r in rows] == [('train', 'vit_jax'), ('train', 'timm'),
                                            ('infer', 'vit_jax'), ('infer', 'timm')]
    for ours, theirs in (rows[0:2], rows[2:4]):
        ratio = float(ours[4].replace(',', '')) / float(theirs[4].replace(',', ''))
        assert abs(float(ours[5].rstrip('x')) / ratio - 1) < 0.01  # img/s print 3 digits
        assert float(ours[6]) > 0 and ours[6] == theirs[6]  # one FLOP count for both
        assert ours[9] == theirs[9] == 'n/a'  # no device memory statistics on CPU
