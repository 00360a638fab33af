r"""Command line: few-shot linear accuracy of a training run or a weights file.

    python -m vit_jax.fewshot --workdir=runs/digits
    python -m vit_jax.fewshot --model=ViT-B_16 --weights=ViT-B_16.npz \
        --config=configs/vit.py:b16,cifar10 --config.pp.crop=224

big_vision's evaluator (`vit_jax.train.fewshot`, what the trainer logs with
`--config.fewshot_every`): the pre-logit features of k examples per class of a training split
(`fewshot_train`, default `pp.train`), a closed-form ridge regression onto ±1 targets, accuracy
on every example of `pp.test`, for each k of `fewshot_shots` (or `--shots`). With `--workdir`
the model, its latest checkpoint (or `--step`) and the data settings come from the run; with
`--model` and `--weights` the data settings come from `--config`. `--config.KEY=VALUE` changes
any data setting either way (e.g. `--config.dataset=/path/to/folder`: few-shot transfer to
another dataset; its own class count is used).
"""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import ml_collections

from vit_jax import cli, inference
from vit_jax import config as config_lib
from vit_jax.errors import VitJaxError
from vit_jax.train import fewshot


def run_fewshot(model: nn.Module, variables: dict, config: ml_collections.ConfigDict,
                shots: tuple[int, ...]) -> dict[str, float]:
    """`{'fewshot_k{k}': accuracy}` of `model` with `variables` on the data `config` names, on
    this process's first device."""
    from vit_jax import data  # the input pipeline imports TensorFlow: only when used

    dataset = data.Dataset(config)
    _, make_test_iter, info = dataset(config)
    make_train_iter = dataset(fewshot.train_split_config(config))[1]
    step = jax.jit(fewshot.feature_step(model, config.pp.normalize))
    return fewshot.evaluate(step, variables, make_train_iter(), make_test_iter(),
                            info.num_classes, shots, config.seed)


def main(argv: list[str] | None = None) -> int:
    """Prints the few-shot accuracies of a run or weights (the CLI); returns the exit status."""
    parser = cli.make_parser('vit_jax.fewshot', __doc__)
    parser.add_argument('--workdir', help='a training run: model, weights and data from it')
    parser.add_argument('--step', type=int, help="the run's checkpoint (default: the latest)")
    parser.add_argument('--ema', action='store_true',
                        help="the run's moving average of the weights")
    parser.add_argument('--model', help='registered model name, e.g. ViT-B_16 (with a weights '
                        'file or URL)')
    parser.add_argument('--weights', help='weights file (.npz, .pth, .bin, .safetensors) or URL '
                        'with --model; a Hugging Face directory; or a published name (python -m '
                        'vit_jax.hub --list)')
    parser.add_argument('--config', help='config file FILE.py[:ARG] naming the data '
                                         '(with --model)')
    parser.add_argument('--shots', help='examples per class, e.g. 1,5,10,25 (default: the '
                                        "config's fewshot_shots)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = cli.config_overrides(parser, rest)
    if bool(args.workdir) == bool(args.model or args.weights):
        parser.error('give --workdir, or --weights (with --model for a file or URL) and '
                     '--config')
    if args.model and not (args.weights and args.config):
        parser.error('--model needs --weights and --config')
    if args.weights and not args.config:
        parser.error('--weights needs --config (the data)')
    try:
        shots = tuple(int(k) for k in args.shots.split(',')) if args.shots else None
    except ValueError:
        parser.error(f'--shots={args.shots!r} is not a comma-separated list of integers')
    try:
        if args.workdir:
            loaded = inference.load(workdir=args.workdir, step=args.step, ema=args.ema)
            model, variables = loaded.model, loaded.variables
            config = config_lib.apply_overrides(loaded.config, overrides)
            if model.img_size != config.pp.crop:
                raise VitJaxError(f'the run in {args.workdir} takes {model.img_size}px images; '
                                  f'leave --config.pp.crop={model.img_size}')
        else:
            config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
            loaded = inference.load(weights_source=args.weights, model=args.model,
                                    img_size=config.pp.crop)
            model, variables = loaded.model, loaded.variables
        shots = shots or tuple(config.get('fewshot_shots', fewshot.SHOTS))
        if not all(k > 0 for k in shots):
            raise VitJaxError(f'--shots must be positive, got {shots}')
        result = run_fewshot(model, variables, config, shots)
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for key, value in result.items():
        print(f'{key} = {value:.6f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
