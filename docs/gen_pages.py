"""Writes the API reference (run by mkdocs-gen-files on every build): one page per module of
vit_jax/, rendered from its docstrings by mkdocstrings, so a new module needs no docs edit; and
the config reference, from `vit_jax.train.config_keys`.

It also warns, through mkdocs' logger, about each public module, function or class without a
docstring (public: no leading underscore, defined in that module), which `mkdocs build
--strict` turns into a failed build. Methods are not checked.
"""

import logging
import pathlib

import griffe
import mkdocs_gen_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger('mkdocs.plugins.vit_jax_docs')


def public(name: str) -> bool:
    return not name.startswith('_')


def undocumented(module: griffe.Module) -> list[str]:
    """Paths of the public module, functions and classes of `module` that have no docstring."""
    missing = [] if module.docstring else [module.path]
    for name, member in module.members.items():
        if member.is_alias or not public(name) or member.is_module:
            continue
        if (member.is_function or member.is_class) and not member.docstring:
            missing.append(member.path)
    return missing


def modules(package: griffe.Module):
    """Every public module of the package, parents before children, in name order."""
    yield package
    for name, member in sorted(package.members.items()):
        if not member.is_alias and member.is_module and public(name):
            yield from modules(member)


def main() -> None:
    package = griffe.load('vit_jax', search_paths=[str(ROOT)], allow_inspection=False)
    nav = mkdocs_gen_files.Nav()
    for module in modules(package):
        for path in undocumented(module):
            log.warning('%s has no docstring; write one (docs/gen_pages.py checks every '
                        'public module, function and class)', path)
        parts = tuple(module.path.split('.'))
        page = pathlib.Path('reference', *parts[:-1], f'{parts[-1]}.md')
        if module.is_package:
            page = pathlib.Path('reference', *parts, 'index.md')
        nav[parts] = page.relative_to('reference').as_posix()
        with mkdocs_gen_files.open(page, 'w') as f:
            f.write(f'::: {module.path}\n')
        mkdocs_gen_files.set_edit_path(page, pathlib.Path(module.filepath).relative_to(ROOT))
    with mkdocs_gen_files.open('reference/SUMMARY.md', 'w') as f:
        f.writelines(nav.build_literate_nav())
    with mkdocs_gen_files.open('config-reference.md', 'w') as f:
        f.write(config_reference())


def config_reference() -> str:
    """The config reference page: every key as `vit_jax.train.config_keys` declares it."""
    from vit_jax.train import config_keys

    return ('# Config reference\n\nEvery key of a training config (`--config.KEY=VALUE`), as '
            '`vit_jax/train/config_keys.py` declares it; `model.*` keys are the chosen '
            "model's options ([Models](models.md)). A relaunch of a run may change only the "
            'keys marked so; `validate` checks every value against this table before anything '
            'runs.\n\n' + config_keys.reference())


if __name__ == '<run_path>':  # how mkdocs-gen-files runs it (runpy.run_path)
    main()
