"""The TPU plan (`vit_jax.plan`): the trainer's real steps compiled for a TPU topology on this
CPU machine (libtpu, no TPU), per-chip memory and FLOPs, the layout search, bad inputs.

Compiles use the scale tests' tiny ViT on a `v5e:2x2` (4 chips); the big models' plans are
slow. The default JAX backend stays the CPU: libtpu only compiles.
"""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import jax
import pytest
import scale_worker

from vit_jax import cli, plan
from vit_jax import config as config_lib
from vit_jax.errors import PlanError
from vit_jax.train.setup import make_mesh, setup

pytestmark = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                reason="needs libtpu: pip install 'vit_jax[tpu]'")
TINY = [('batch', '64'), ('batch_eval', '64'), ('model.embed_dim', '64'),
        ('model.num_heads', '4'), ('pp.crop', '32'), ('model.patch_size', '8')]


def tiny(*overrides):
    return scale_worker.make_config([*TINY, *overrides])


@pytest.fixture(scope='module')
def v5e():
    return plan.topology_devices('v5e:2x2')


def test_the_default_backend_stays_the_cpu(v5e):
    assert jax.default_backend() == 'cpu'
    assert len(v5e) == 4 and plan.chip_count(v5e) == 4
    assert v5e[0].platform == 'tpu' and jax.devices()[0].platform == 'cpu'


def test_plan_of_the_tiny_model_with_fsdp_splits_the_state(v5e):
    replicated = plan.plan(tiny(('mesh', "[('data', 4)]")), 'v5e:2x2', 4, v5e)
    fsdp = plan.plan(tiny(('mesh', "[('fsdp', 4)]")), 'v5e:2x2', 4, v5e)
    for result in (replicated, fsdp):
        assert result.fits and result.chips == 4 and result.hbm_bytes_per_chip == 16 * 2 ** 30
        assert result.train_bytes_per_chip >= result.argument_bytes_per_chip > 0
        assert result.flops_per_step_per_chip > 0 and result.model_flops_per_step > 0
    assert fsdp.mesh == {'data': 1, 'fsdp': 4, 'model': 1}
    # Every array but the small ones (< fsdp_min_size = 0 here: all) splits 4 ways.
    ratio = fsdp.state_bytes_per_chip / replicated.state_bytes_per_chip
    assert 0.25 <= ratio < 0.3, ratio
    # The same work per chip either way: the batch splits 4 ways in both.
    assert abs(fsdp.model_flops_per_step - replicated.model_flops_per_step) < 1



def test_the_flops_of_a_step_with_loops_are_those_of_the_step_without(v5e):
    # XLA counts a loop's body once: scanned layers, micro-batches. The plan extrapolates.
    config = lambda *loops: tiny(('mesh', "[('data', 4)]"), ('model.depth', '4'),  # noqa: E731
                                 ('model.remat', 'True'), *loops)
    looped = plan.plan(config(('model.scan_layers', 'True'), ('accum_steps', '2')),
                       'v5e:2x2', 4, v5e)
    plain = plan.plan(config(), 'v5e:2x2', 4, v5e)
    assert looped.flops_per_step_per_chip == pytest.approx(plain.flops_per_step_per_chip,
                                                           rel=0.01)


def test_a_distilled_run_plans_with_its_teacher(v5e):
    # The train step of a distilled run also takes the frozen teacher's variables.
    config = tiny(('mesh', "[('data', 4)]"), ('distill.type', 'hard'),
                  ('teacher.model', 'testing'), ('teacher.weights', 'unread.npz'),
                  ('teacher.img_size', '32'))
    student = plan.plan(tiny(('mesh', "[('data', 4)]")), 'v5e:2x2', 4, v5e)
    distilled = plan.plan(config, 'v5e:2x2', 4, v5e)
    assert distilled.fits
    assert distilled.argument_bytes_per_chip > student.argument_bytes_per_chip
    assert distilled.flops_per_step_per_chip > student.flops_per_step_per_chip


def test_plan_with_a_model_axis_compiles_and_splits_attention_and_mlp(v5e):
    config = tiny(('mesh', "[('data', 1), ('fsdp', 2), ('model', 2)]"))
    result = plan.plan(config, 'v5e:2x2', 4, v5e)
    assert result.fits and result.mesh == {'data': 1, 'fsdp': 2, 'model': 2}
    # Attention and MLP arrays split 4 ways (fsdp x model), the others 2 ways (fsdp).
    replicated = plan.state_bytes(setup(tiny(('mesh', "[('data', 4)]")), 4, make_mesh(
        tiny(('mesh', "[('data', 4)]")), v5e)).abstract_state)
    ratio = result.state_bytes_per_chip / replicated
    assert 0.25 < ratio < 0.5, ratio


def test_the_search_tries_model_axes_beside_fsdp():
    config = tiny(('mesh', "[('data', 4)]"), ('batch', '256'))
    found = plan.layouts(config, 8)
    assert {layout.model for layout in found} == {1, 2, 4}
    layout = next(x for x in found if x.model == 2 and x.fsdp == 2)
    assert dict(layout.flags(config, 8))['mesh'] == "[('data', 2), ('fsdp', 2), ('model', 2)]"
    assert all(config.batch % (x.accum_steps * 8 // x.model) == 0 for x in found)


@pytest.fixture(scope='module')
def too_big(v5e):
    """The tiny model data-parallel, and a chip with 60 % of the memory its train step needs."""
    config = tiny(('mesh', "[('data', 4)]"), ('batch', '256'))
    needs = plan.plan(config, 'v5e:2x2', 4, v5e).train_bytes_per_chip
    return config, int(needs * 0.6)


def test_a_config_that_cannot_fit_says_so(v5e, too_big):
    config, hbm = too_big
    result = plan.plan(config, 'v5e:2x2', 4, v5e, hbm_bytes=hbm)
    assert not result.fits and result.headroom_bytes_per_chip < 0
    assert 'does NOT fit' in plan.report(result)


def test_a_step_the_tpu_compiler_refuses_is_a_plan_that_does_not_fit(v5e):
    # 2^22 images of 32 px: 12 GiB per chip of float pixels alone, over v5e's 16 GiB in all.
    config = tiny(('mesh', "[('data', 4)]"), ('batch', str(2 ** 22)))
    result = plan.plan(config, 'v5e:2x2', 4, v5e)
    assert not result.fits and 'RESOURCE_EXHAUSTED' in result.overflow
    assert result.temp_bytes_per_chip > 12 * 2 ** 30 and result.headroom_bytes_per_chip < 0
    assert 'eval' not in result.compile_seconds
    assert "does NOT fit" in plan.report(result) and "XLA's TPU compiler" in plan.report(result)


@pytest.mark.slow
def test_the_first_suggestion_of_the_search_fits_as_printed(v5e, too_big):
    config, hbm = too_big
    found = plan.search(config, 'v5e:2x2', 4, v5e, limit=1, hbm_bytes=hbm)
    assert found and found[0][1].fits
    printed = plan.command_flags(found[0][0])
    overrides = cli.config_overrides(argparse.ArgumentParser(), shlex.split(printed))
    again = plan.plan(config_lib.apply_overrides(tiny(('mesh', "[('data', 4)]"),
                                                      ('batch', '256')), overrides),
                      'v5e:2x2', 4, v5e, hbm_bytes=hbm)
    assert again.fits and again.train_bytes_per_chip == found[0][1].train_bytes_per_chip


def run_plan(*args):
    env = {**os.environ, 'PYTHONPATH': scale_worker.REPO, 'JAX_PLATFORMS': 'cpu'}
    return subprocess.run([sys.executable, '-m', 'vit_jax.plan', *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=scale_worker.REPO)


def test_json_has_the_documented_keys():
    out = run_plan('--config=configs/vit.py:testing,cifar10', '--topology=v5e:2x2', '--json',
                   '--config.accum_steps=1', '--config.batch=64', '--config.batch_eval=64',
                   '--config.pp.crop=32', '--config.model.patch_size=8')
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= {'topology', 'chips', 'hbm_bytes_per_chip', 'train_bytes_per_chip',
                           'argument_bytes_per_chip', 'temp_bytes_per_chip', 'fits',
                           'flops_per_step_per_chip', 'model_flops_per_step', 'compile_seconds'}
    assert result['topology'] == 'v5e:2x2' and result['chips'] == 4 and result['fits']


@pytest.mark.parametrize('args, message', [
    (['--topology=v5x:2x2'], "unknown TPU topology 'v5x:2x2'; name one as"),
    (['--topology=v5e:3x7'], "libtpu does not know TPU topology 'v5e:3x7'"),
    (['--topology=v5e:2x2', "--config.mesh=[('data', 8)]"],
     "--config.mesh=[('data', 8)] needs 8 devices but there are 4"),
    (['--topology=v5e:2x2', '--config.dataset=my_photos'],
     "the class count of dataset 'my_photos' is unknown here"),
])
def test_bad_inputs_are_one_line_errors(args, message):
    out = run_plan('--config=configs/vit.py:testing,cifar10', *args)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f'error: {message}'), out.stderr[-3000:]
    assert 'Traceback' not in out.stderr


def test_without_libtpu_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(PlanError, match=r"needs libtpu.*pip install 'vit_jax\[tpu\]'"):
        plan.topology_devices('v5e:2x2')


def test_the_big_vits_place_on_a_v5p_256_with_fsdp_scanned_and_rematerialised():
    """ViT-e/14 with FSDP over 256 chips: its state's per-chip bytes, without compiling."""
    devices = plan.topology_devices('v5p:8x8x4')
    config = config_lib.apply_overrides(
        config_lib.load_config(os.path.join(scale_worker.REPO, 'vit_jax', 'configs', 'vit.py')
                               + ':ViT-e_14,imagenet2012'),
        [('mesh', "[('fsdp', -1)]"), ('model.scan_layers', 'True'), ('model.remat', 'True'),
         ('batch', '4096'), ('accum_steps', '1'), ('pp.crop', '224'),
         ('model.dtype', 'bfloat16')])
    run = setup(config, 1000, make_mesh(config, devices))
    assert dict(run.mesh.shape)['fsdp'] == 256
    params = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
    assert params == 3_807_214_312
    # float32 parameters + bfloat16 SGD momentum (the config's), split 256 ways, plus the
    # arrays kept whole (biases and norms: below fsdp_min_size per layer), 0.3 % of them.
    per_chip = plan.state_bytes(run.abstract_state)
    assert params * 6 / 256 <= per_chip < params * 6 / 256 * 1.15, per_chip
