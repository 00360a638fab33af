#!/usr/bin/env bash
# Runs the test suite (installs what is missing first). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q --durations=10 "$@"
