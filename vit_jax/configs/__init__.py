"""The config files of the command lines, shipped with the package.

`--config=configs/NAME.py[:ARG]` names one of them from any working directory (a file at that
path relative to the working directory comes first); `vit_jax.config.load_config` loads them by
path, their folder as a package, so they import their neighbours with `from . import common`.
"""
