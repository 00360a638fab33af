"""Knowledge distillation on digits: a distilled ViT-digits alone, and taught by the main job's
ViT with hard and with soft distillation, per seed; prints one JSON line per run.

The teacher is the main job (`configs/digits.py`) trained once into `--workdir`/teacher. Each
student is the main job's recipe cut to `--steps`, with a distillation token
(`model.distilled=True`, `model.classifier=token`), reading `--train_split` of the digits.

    PYTHONPATH=. python scripts/distill_digits.py                    # about 5 minutes, 2 cores
    PYTHONPATH=. python scripts/distill_digits.py --train_split='train[:20%]'
"""

import argparse
import json
import os

from vit_jax import config as config_lib
from vit_jax.train.loop import train

KINDS = ('none', 'hard', 'soft')


def digits_config(data_dir: str, *overrides: tuple[str, str]):
    """The main job's config reading `data_dir`, with `overrides`."""
    return config_lib.apply_overrides(
        config_lib.load_config('configs/digits.py'),
        [('tfds_data_dir', data_dir), ('progress_every', '1000'), *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', default='/tmp/distill_digits')
    parser.add_argument('--steps', default='400')
    parser.add_argument('--seeds', default='0,1')
    parser.add_argument('--train_split', default='train')
    args = parser.parse_args()
    data_dir, teacher = f'{args.workdir}/tfds', f'{args.workdir}/teacher'
    if not os.path.exists(f'{teacher}/weights.npz'):
        result = train(digits_config(data_dir), teacher)
        print(json.dumps({'teacher': result['accuracy']}), flush=True)
    student = [('total_steps', args.steps), ('warmup_steps', '20'), ('eval_every', args.steps),
               ('checkpoint_every', args.steps), ('model.distilled', 'True'),
               ('model.classifier', 'token'), ('pp.train', args.train_split)]
    for seed in args.seeds.split(','):
        for kind in KINDS:
            taught = [] if kind == 'none' else [
                ('distill.type', kind), ('teacher.model', 'ViT-digits'),
                ('teacher.weights', f'{teacher}/weights.npz')]
            workdir = f'{args.workdir}/{kind}_{args.steps}_{args.train_split}_{seed}'
            result = train(digits_config(data_dir, *student, *taught, ('seed', seed)), workdir)
            print(json.dumps({'distill': kind, 'seed': seed, 'steps': args.steps,
                              'train_split': args.train_split, 'accuracy': result['accuracy'],
                              'loss': result['loss']}), flush=True)


if __name__ == '__main__':
    main()
