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
