"""scripts/benchmark.py on CPU: a tiny vit_jax model beside a tiny timm model, where neither
TensorFlow nor ml_collections can be imported (as on the GPU machine)."""

import os
import subprocess
import sys

import pytest

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


def aot_rows(repo, *args: str) -> dict[str, dict[str, str]]:
    """`benchmark.py --aot=h200 ARGS` (compiled for an H200 on this machine's CPU): its table,
    one row `{column: cell}` per model."""
    env = {**os.environ, 'PYTHONPATH': repo}
    result = subprocess.run([sys.executable, '-c', RUN, '--aot=h200', '--mode=train', *args],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith('| ')]
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    rows = [dict(zip(head, [c.strip() for c in line.strip('|').split('|')], strict=True))
            for line in lines[1:]]
    return {row['model']: row for row in rows}


def test_aot_compiles_cudnn_attention_forward_and_backward_for_an_h200(repo):
    # 17 tokens (16 patches and the class token): cuDNN runs them padded to 32.
    (row,) = aot_rows(repo, '--models=ViT-Ti_16', '--img_size=64', '--batch=4').values()
    assert (row['cuDNN attention fwd'], row['bwd']) == ('yes', 'yes')
    assert '__cudnn$fmhaSoftmax x12' in row['custom calls']  # one per block, none recomputed
    assert '__cudnn$fmhaSoftmaxBackward x12' in row['custom calls']
    assert int(row['fusions']) > 0 and float(row['temp GiB']) >= 0
    assert float(row['GFLOP/img']) > 0


# timm's measured peak memory of each train step (README: one H200, batch 256, 224 px, bf16).
TIMM_PEAK_GIB = {'ViT-B_16': 17.4, 'swin_tiny_patch4_window7_224': 15.2, 'convnext_tiny': 14.1}


@pytest.mark.slow  # about 2 minutes: three full-size train steps compiled for an H200
def test_aot_train_steps_fit_in_timms_peak_memory(repo):
    rows = aot_rows(repo, f'--models={",".join(TIMM_PEAK_GIB)}', '--batch=256')
    for name, peak in TIMM_PEAK_GIB.items():
        assert float(rows[name]['total GiB']) <= peak, rows[name]
    assert (rows['ViT-B_16']['cuDNN attention fwd'], rows['ViT-B_16']['bwd']) == ('yes', 'yes')
    # ViT-B/16's forward and backward, counted by XLA (2 FLOPs a multiply-add): ~3 x 35 GFLOP.
    assert 100 < float(rows['ViT-B_16']['GFLOP/img']) < 115
