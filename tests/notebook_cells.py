"""Runs a notebook's code cells in order in one namespace, as a kernel would; `%` and `!` lines
are shell commands for Colab and are skipped.

    python tests/notebook_cells.py NOTEBOOK.ipynb [--first N] [--last N]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def code_cells(path: str) -> list[str]:
    """The source of each code cell of the notebook `path`, without `%` and `!` lines."""
    with open(path) as f:
        notebook = json.load(f)
    return ['\n'.join(line for line in ''.join(cell['source']).splitlines()
                      if not line.lstrip().startswith(('%', '!')))
            for cell in notebook['cells'] if cell['cell_type'] == 'code']


def run_cells(path: str, first: int = 0, last: int | None = None,
              namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs code cells `first..last` (inclusive) of `path` in `namespace`; a failing cell raises
    AssertionError naming the notebook and the cell."""
    namespace = {'__name__': '__main__'} if namespace is None else namespace
    cells = code_cells(path)
    for i in range(first, len(cells) if last is None else last + 1):
        try:
            exec(compile(cells[i], f'{path}[cell {i}]', 'exec'), namespace)
        except Exception as e:
            raise AssertionError(f'{path}, code cell {i} failed: {type(e).__name__}: {e}') from e
    return namespace


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('notebook')
    parser.add_argument('--first', type=int, default=0)
    parser.add_argument('--last', type=int)
    args = parser.parse_args()
    start = time.perf_counter()
    run_cells(args.notebook, args.first, args.last)
    print(f'{args.notebook}: cells {args.first}..{"end" if args.last is None else args.last} '
          f'ran in {time.perf_counter() - start:.1f}s')
