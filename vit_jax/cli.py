"""What every `python -m vit_jax.*` command line shares: its parser, with `--version`."""

from __future__ import annotations

import argparse

from vit_jax.version import __version__


def make_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An argument parser for `python -m PROG` showing `description` verbatim, with `--version`."""
    parser = argparse.ArgumentParser(prog=f'python -m {prog}', description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'vit_jax {__version__}')
    return parser


def config_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> list[tuple[str, str]]:
    """`--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments left over by
    `parser.parse_known_args` as `(KEY, VALUE)` pairs; anything else is a usage error."""
    overrides, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith('--config.'):
            parser.error(f'unrecognized argument {arg!r}; overrides look like --config.KEY=VALUE')
        key, eq, value = arg[len('--config.'):].partition('=')
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f'{arg} needs a value: {arg}=VALUE')
            value, i = rest[i + 1], i + 1
        overrides.append((key, value))
        i += 1
    return overrides
