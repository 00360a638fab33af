#!/usr/bin/env bash
# Writes constraints.txt from what .venv holds now: run it after the test suite passed with
# new versions (bash scripts/setup.sh test, then upgrade, then bash scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${VENV:-.venv}/bin/python"
{
    echo "# The exact versions CI tests (Python $("$python" -c 'import sys; print(*sys.version_info[:2], sep=".")'), $(uname -s) $(uname -m))."
    echo "# scripts/setup.sh installs with them; VIT_JAX_CONSTRAINTS= (empty) installs without."
    echo "# Written by scripts/update_constraints.sh; tests/test_install.py fails when .venv drifts."
    "$python" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
        | sed -e 's/+cpu$//' | grep -v '^#'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
