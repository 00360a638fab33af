#!/usr/bin/env bash
# The main job: installs what is missing, then trains a small ViT from scratch on the embedded
# handwritten digits (offline) and prints its held-out accuracy. Extra arguments are passed on,
# e.g. --config.total_steps=600.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh data,tensorboard
workdir="${WORKDIR:-runs/digits}"
set -x
.venv/bin/python -m vit_jax.main --config=configs/digits.py --workdir="$workdir" "$@"
