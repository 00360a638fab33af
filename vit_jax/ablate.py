r"""Ablation studies: a sweep of training runs, one axis at a time, with a results table and plots.

    python -m vit_jax.ablate --config=configs/ablations/vit_small_data.py --workdir=runs/ablate

A study config's `get_config()` returns `base` (a normal training config), `axes` — a list of
`(name, [(label, [(config key, value), ...]), ...])` — and `quick`, overrides that make every
point a few steps long (`--quick`). Each distinct point is a normal `vit_jax.train.loop.train`
run in its own sub-workdir (a point equal to the base is trained once, in `base/`): an
interrupted study resumes from the checkpoints, and finished points are skipped. The workdir
gets `results.md`, `results.csv` and `curves_<axis>.png` (held-out accuracy and training loss
per setting).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import ml_collections
from etils import epath

from vit_jax import cli, storage
from vit_jax import config as config_lib
from vit_jax.errors import ConfigError, TrainingError, VitJaxError

if TYPE_CHECKING:
    from vit_jax.train.workdir import Workdir

COLUMNS = ('axis', 'setting', 'run', 'params', 'eval_accuracy', 'eval_loss', 'train_loss',
           'seconds')


@dataclasses.dataclass
class Point:
    """One setting of one axis, and the sub-workdir (`run`) that trains it."""

    axis: str
    setting: str
    run: str
    config: ml_collections.ConfigDict


def slug(text: str) -> str:
    """'attention dropout' -> 'attention-dropout' (file names)."""
    return re.sub(r'[^A-Za-z0-9.]+', '-', text).strip('-').lower()


def points(study: ml_collections.ConfigDict, *, quick: bool = False,
           only: tuple[str, ...] = ()) -> list[Point]:
    """Every (axis, setting) of `study` with its training config; `only` keeps those axes."""
    base = _with(study.base, study.quick if quick else [])
    names = [name for name, _ in study.axes]
    unknown = [a for a in only if a not in names]
    if unknown:
        raise ConfigError(f'--only: unknown axes {unknown}; the study has {names}')
    base_key = _key(base)
    out = []
    for name, settings in study.axes:
        if only and name not in only:
            continue
        for label, overrides in settings:
            config = _with(base, overrides)
            run = 'base' if _key(config) == base_key else f'{slug(name)}_{slug(str(label))}'
            out.append(Point(name, str(label), run, config))
    return out


def _with(config: ml_collections.ConfigDict, overrides: list) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    return config_lib.apply_overrides(config, [(k, str(v)) for k, v in overrides])


def _key(config: ml_collections.ConfigDict) -> str:
    return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


def run_point(config: ml_collections.ConfigDict, location: epath.Path) -> dict[str, Any]:
    """Trains one point in the workdir `location` unless already done; returns its
    `point.json` record."""
    from vit_jax import weights
    from vit_jax.train import loop
    from vit_jax.train.workdir import Workdir

    workdir = Workdir(location)
    done = workdir.file('point.json')
    workdir.check_config(config)  # a changed study must not mix with its old runs
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    try:
        final = loop.train(config, str(workdir))
        outcome = {'eval_accuracy': final['accuracy'], 'eval_loss': final['loss'], 'error': None}
    except TrainingError as e:  # e.g. a diverged point: recorded, the study goes on
        outcome = {'eval_accuracy': None, 'eval_loss': None, 'error': str(e)}
    shapes = weights.model_shapes(workdir.load_model()[0])  # shapes only: nothing is read
    record = {'params': sum(s.size for k, s in shapes.items() if k.startswith('params/')),
              **outcome}
    losses = [r['train_loss'] for r in _metrics(workdir) if 'train_loss' in r]
    record['train_loss'] = losses[-1] if losses else None
    record['seconds'] = round(time.perf_counter() - start, 1)
    storage.write_atomic(done, json.dumps(record, indent=2))
    return record


def _metrics(workdir: Workdir) -> list[dict[str, Any]]:
    """metrics.jsonl, one record per step (a resumed run's repeated steps: the last one)."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in workdir.read_metrics():
        by_step.setdefault(r['step'], {}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def check_points(all_points: list[Point]) -> None:
    """One `ConfigError` naming every point whose config or model cannot work, before any
    point trains (the model is traced, not initialised)."""
    from vit_jax import models, weights

    problems = []
    for p in all_points:
        try:
            config_lib.validate(p.config)
            model = models.create_model(p.config.model_name,
                                        **config_lib.model_overrides(p.config), num_classes=2,
                                        img_size=p.config.pp.crop)
            weights.model_shapes(model)
        except VitJaxError as e:
            problems.append(f'{p.axis} = {p.setting}: {e}')
    if problems:
        raise ConfigError(f'{len(problems)} of {len(all_points)} points cannot train, so none '
                          f'was trained: {"; ".join(problems)}')


def run_study(study: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
              quick: bool = False, only: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Trains every point not yet done in a sub-workdir of `workdir` (a local folder or a
    bucket), then writes the table and the plots; returns the rows."""
    workdir = storage.path(workdir)
    rows, records = [], {}
    all_points = points(study, quick=quick, only=only)
    check_points(all_points)
    for i, point in enumerate(all_points):
        if point.run not in records:
            print(f'[{i + 1}/{len(all_points)}] {point.axis} = {point.setting} '
                  f'({point.run})', flush=True)
            records[point.run] = run_point(point.config, workdir / point.run)
        rows.append({'axis': point.axis, 'setting': point.setting, 'run': point.run,
                     **records[point.run]})
    write_table(rows, workdir, title=study.get('name', 'Ablation'))
    write_plots(all_points, workdir)
    return rows


def write_table(rows: list[dict[str, Any]], workdir: epath.Path,
                title: str = 'Ablation') -> None:
    """`results.csv` (all columns) and `results.md` (one table, grouped by axis)."""
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=COLUMNS + ('error',), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    storage.write_atomic(workdir / 'results.csv', table.getvalue())

    def num(value: Any, fmt: str) -> str:
        return '—' if value is None else format(value, fmt)

    lines = [f'# {title}', '',
             '| axis | setting | parameters | held-out accuracy | held-out loss | '
             'final train loss | time (s) |', '|---|---|---:|---:|---:|---:|---:|']
    for r in rows:
        accuracy = num(r['eval_accuracy'], '.2%') if not r.get('error') else 'diverged'
        lines.append(f'| {r["axis"]} | {r["setting"]} | {r["params"]:,} | {accuracy} | '
                     f'{num(r["eval_loss"], ".3f")} | {num(r["train_loss"], ".3f")} | '
                     f'{num(r["seconds"], ".0f")} |')
    storage.write_atomic(workdir / 'results.md', '\n'.join(lines) + '\n')


def write_plots(all_points: list[Point], workdir: epath.Path) -> list[str]:
    """`curves_<axis>.png`: held-out accuracy and training loss against step, one line per
    setting. Returns the file names."""
    import matplotlib.pyplot as plt

    from vit_jax.train.workdir import Workdir

    names = []
    for axis in dict.fromkeys(p.axis for p in all_points):
        fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
        for p in (p for p in all_points if p.axis == axis):
            records = _metrics(Workdir(workdir / p.run))
            evals = [(r['step'], r['eval_accuracy']) for r in records if 'eval_accuracy' in r]
            losses = [(r['step'], r['train_loss']) for r in records if 'train_loss' in r]
            if evals:
                acc_ax.plot(*zip(*evals, strict=True), marker='o', ms=3, label=p.setting)
            if losses:
                loss_ax.plot(*zip(*losses, strict=True), label=p.setting)
        acc_ax.set(xlabel='step', ylabel='held-out accuracy', title=axis)
        loss_ax.set(xlabel='step', ylabel='training loss', yscale='log', title=axis)
        acc_ax.legend(fontsize=7)
        fig.tight_layout()
        name = f'curves_{slug(axis)}.png'
        image = io.BytesIO()
        fig.savefig(image, format='png', dpi=100)
        storage.write_atomic(workdir / name, image.getvalue())
        plt.close(fig)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    """Runs the ablation study of `--config` (the CLI); returns the exit status."""
    parser = cli.make_parser('vit_jax.ablate', __doc__)
    parser.add_argument('--config', required=True, help='study config file, FILE.py[:ARG]')
    parser.add_argument('--workdir', required=True, help='one sub-workdir per point goes here')
    parser.add_argument('--quick', action='store_true', help="a few steps per point (tests)")
    parser.add_argument('--only', default='', help='comma-separated axis names to run')
    args = parser.parse_args(argv)
    try:
        study = config_lib.load_config(args.config)
        start = time.perf_counter()
        storage.path(args.workdir).mkdir(parents=True, exist_ok=True)
        run_study(study, args.workdir, quick=args.quick,
                  only=tuple(a for a in args.only.split(',') if a))
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print((storage.path(args.workdir) / 'results.md').read_text())
    print(f'Study done in {time.perf_counter() - start:.0f}s; table, CSV and curves in '
          f'{args.workdir}.')
    return 0


if __name__ == '__main__':
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as vit_jax.main: skip the tf.data teardown that stalls exit
