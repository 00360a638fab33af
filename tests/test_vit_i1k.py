"""configs/vit_i1k.py: big_vision's plain ViT baseline for ImageNet-1k (vit_s16_i1k.py) as our
config, its values checked, and (slow) a short run of it on digits through the command line."""

import json
import math
import os
import subprocess
import sys

import pytest

from vit_jax.errors import ConfigError


@pytest.mark.parametrize('arg, model, epochs', [('s16', 'ViT-S_16', 90),
                                                ('b16,epochs=300', 'ViT-B_16', 300)])
def test_the_recipe_is_big_visions(load_config, arg, model, epochs):
    c = load_config(f'vit_i1k.py:{arg}')
    assert c.model_name == model and c.dataset == 'imagenet2012'
    assert (c.model.classifier, c.model.pos_embed) == ('gap', 'sincos2d')
    assert c.model.representation_size == {'ViT-S_16': 384, 'ViT-B_16': 768}[model]
    assert (c.pp.train, c.pp.test, c.pp.crop, c.pp.eval_crop_pct) == (
        'train[:99%]', 'validation', 224, 0.875)
    assert (c.pp.randaug_layers, c.pp.randaug_magnitude, c.pp.normalize) == (
        2, 10, 'minus_one_one')
    assert (c.batch, c.optimizer, c.base_lr, c.weight_decay, c.optim_dtype) == (
        1024, 'adamw', 1e-3, 1e-4, 'bfloat16')
    assert (c.warmup_steps, c.decay_type, c.min_lr, c.grad_norm_clip) == (
        10_000, 'cosine', 0.0, 1.0)
    assert (c.mixup_alpha, c.cutmix_alpha, c.label_smoothing) == (0.2, 0.0, 0.0)
    assert c.total_steps == -(-epochs * 1_268_356 // 1024)  # 99 % of the 1,281,167 images


def test_bad_arguments_are_one_line_errors(load_config):
    for arg in ('l16', 's16,epochs=ninety'):
        with pytest.raises(ConfigError, match='choose a variant out of s16, b16'):
            load_config(f'vit_i1k.py:{arg}')


@pytest.mark.slow
def test_a_short_run_on_digits_through_the_command_line(repo, digits_data_dir, tmp_path):
    """The recipe on digits (16 px, 4x4 patches) for 60 steps of 32 runs end to end: every
    held-out example evaluated, few-shot accuracy logged at the end, finite losses. (It does not
    learn at this scale: ViT-S/16 at lr 1e-3 without big_vision's 10,000 warm-up steps and batch
    1024 stays at chance, 150 steps measured.)"""
    workdir = str(tmp_path / 'run')
    result = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_i1k.py:s16,digits',
         f'--workdir={workdir}', f'--config.tfds_data_dir={digits_data_dir}',
         '--config.batch=32', '--config.total_steps=60', '--config.warmup_steps=6',
         '--config.eval_every=60', '--config.fewshot_every=60', '--config.fewshot_shots=(1, 5)'],
        cwd=repo, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(workdir, 'final_metrics.json')) as f:
        final = json.load(f)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    fewshot = [r for r in records if 'fewshot_k5' in r]
    assert [r['step'] for r in fewshot] == [60] and 0 <= fewshot[0]['fewshot_k1'] <= 1
    assert final['count'] == 360 and math.isfinite(final['loss'])
    assert all(math.isfinite(r['train_loss']) for r in records if 'train_loss' in r)
