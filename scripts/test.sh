#!/usr/bin/env bash
# Runs the test suite (installs what is missing first) in two processes, each taking whole test
# files (`--dist loadfile`: a file's module fixtures are built once). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests, `-n 0` for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=10 "$@"
