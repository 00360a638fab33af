r"""Command line: trains a model from a config file.

    python -m vit_jax.main --config=configs/vit.py:b16,cifar10 --workdir=DIR --config.batch=128

`--config=FILE.py[:ARG]` names the config; `--config.KEY=VALUE` (or `--config.KEY VALUE`)
changes any key, nested keys with dots (`--config.pp.crop=224`). The run resumes from the
latest checkpoint in `--workdir`; SIGTERM saves a checkpoint and exits (status 0).

Several processes (hosts): start the same command on each with `--multiprocess` (plus
`--coordinator_address=HOST0:PORT --num_processes=N --process_id=I` where JAX cannot find
them itself); `--workdir` must be a directory every process sees.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vit_jax import cli
from vit_jax.errors import VitJaxError


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Splits `argv` into the named flags and the `--config.KEY VALUE` overrides."""
    parser = cli.make_parser('vit_jax.main', __doc__)
    parser.add_argument('--config', required=True, help='config file, FILE.py[:ARG]')
    parser.add_argument('--workdir', required=True, help='checkpoints and metrics go here')
    parser.add_argument('--multiprocess', action='store_true',
                        help='join a multi-process run (jax.distributed.initialize); on TPU pods, '
                             'SLURM and Open MPI JAX finds the processes itself')
    parser.add_argument('--coordinator_address',
                        help='host:port of process 0 (with --multiprocess)')
    parser.add_argument('--num_processes', type=int, help='processes in all (with --multiprocess)')
    parser.add_argument('--process_id', type=int, help='this process, 0... (with --multiprocess)')
    args, rest = parser.parse_known_args(argv)
    return args, cli.config_overrides(parser, rest)


def main(argv: list[str] | None = None) -> int:
    """Trains from `--config` into `--workdir` (the CLI); returns the exit status (2: bad input)."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('vit_jax').setLevel(logging.INFO)  # e.g. which arrays weights.load adapted
    try:
        from vit_jax import config as config_lib
        from vit_jax.train import loop, sharding

        if args.multiprocess:
            sharding.initialize_processes(args.coordinator_address, args.num_processes,
                                                args.process_id)
        config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
        loop.train(config, args.workdir)
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    code = main()
    # Everything is written and closed by now. Skip interpreter teardown: destroying a live
    # tf.data iterator there stalled exit by 25-45 s on 2 cores (waiting for its threads).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
