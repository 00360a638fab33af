"""The import graph of vit_jax/, read from the source (nothing is imported).

    python scripts/import_graph.py            # floors of the parts, circles, upward arrows
    python scripts/import_graph.py --modules  # every module's vit_jax imports

A part is a sub-package (`models`, `data`, `train`, `analysis`, `configs`) or a top-level
module. Imports inside functions count (they run when the function does) and are marked
`(lazy)`; imports under `if TYPE_CHECKING:` do not. Floor 0 imports no other part; a part's
floor is one above the highest part it imports. Parts that import each other (a circle) share a
floor and are printed together. docs/architecture.md draws its floors from this output.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'vit_jax'


def module_names() -> dict[str, pathlib.Path]:
    """'vit_jax.train.loop' -> its file, for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(ROOT).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        names['.'.join(parts)] = path
    return names


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def imports(name: str, path: pathlib.Path, known: set[str]) -> dict[str, bool]:
    """The vit_jax modules `name` imports -> whether only lazily (inside a function)."""
    found: dict[str, bool] = {}
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]

    def add(target: str, lazy: bool):
        while target and target not in known:
            target = target.rpartition('.')[0]
        if target and target != name:
            found[target] = found.get(target, True) and lazy

    def visit(node: ast.AST, lazy: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ''
                if child.level:
                    up = package.split('.')[: len(package.split('.')) - child.level + 1]
                    base = '.'.join(up + ([base] if base else []))
                for alias in child.names:
                    full = f'{base}.{alias.name}'
                    add(full if full in known else base, lazy)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return {t: lazy for t, lazy in found.items() if t.startswith('vit_jax')}


def part(module: str) -> str:
    """The part a module belongs to: its sub-package, or the top-level module itself."""
    pieces = module.split('.')
    if len(pieces) == 1:
        return 'vit_jax'
    return pieces[1]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (each a sorted list)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def floors(graph: dict[str, set[str]]) -> tuple[dict[str, int], list[list[str]]]:
    """Each node's floor, and the circles (components of more than one node)."""
    components = strongly_connected(graph)
    home = {v: i for i, c in enumerate(components) for v in c}
    level: dict[int, int] = {}
    for i, component in enumerate(components):  # Tarjan lists callees before callers
        below = {home[w] for v in component for w in graph[v]} - {i}
        level[i] = 1 + max((level[j] for j in below), default=-1)
    return {v: level[home[v]] for v in graph}, [c for c in components if len(c) > 1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--modules', action='store_true', help="every module's imports")
    args = parser.parse_args(argv)
    names = module_names()
    edges = {name: imports(name, path, set(names)) for name, path in names.items()}
    if args.modules:
        for name, targets in edges.items():
            shown = [t + (' (lazy)' if lazy else '') for t, lazy in sorted(targets.items())]
            print(f'{name}: {", ".join(shown) or "-"}')
        return
    parts: dict[str, set[str]] = {}
    for name, targets in edges.items():
        if name == 'vit_jax':
            continue  # the package's face re-exports parts; it is no floor
        key = name.removeprefix('vit_jax.') if part(name) == 'vit_jax' else part(name)
        parts.setdefault(key, set())
        for target in targets:
            if target == 'vit_jax':
                continue
            other = target.removeprefix('vit_jax.') if part(target) == 'vit_jax' else part(target)
            if other != key:
                parts[key].add(other)
                parts.setdefault(other, set())
    level, circles = floors(parts)
    for floor in range(max(level.values()) + 1):
        members = sorted(p for p in level if level[p] == floor)
        print(f'floor {floor}: {", ".join(members)}')
    print('circles between parts:', '; '.join(' <-> '.join(c) for c in circles) or 'none')
    module_level, module_circles = floors({n: set(t) - {'vit_jax'} for n, t in edges.items()})
    print('circles between modules:',
          '; '.join(' <-> '.join(c) for c in module_circles) or 'none')
    for key in sorted(parts):
        print(f'  {key} -> {", ".join(sorted(parts[key])) or "-"}')


if __name__ == '__main__':
    main(sys.argv[1:])
