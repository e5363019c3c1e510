#!/usr/bin/env bash
# The whole CI job, exactly as a newcomer runs it: lint, format, types, every test.
# Usage: bash bootstrap/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"

# The Redfish emulator the BMC tests run (tests/integration/sushy.py), in its own
# virtualenv: its Flask stack must not meet meshd's dependencies. Built once.
sushy=.cache/sushy-venv
if [[ ! -f $sushy/.sushy-tools-2.2.0 ]]; then
    echo "== sushy-tools 2.2.0 in $sushy"
    python3 -m venv "$sushy"
    "$sushy/bin/pip" install -q --disable-pip-version-check 'sushy-tools==2.2.0'
    echo 2.2.0 >"$sushy/.sushy-tools-2.2.0"
fi

echo "== ruff check"
ruff check meshd tests benchmarks
echo "== ruff format --check"
ruff format --check meshd tests benchmarks
echo "== mypy --strict meshd"
mypy --strict meshd
echo "== pytest"
# -p no:cacheprovider: CI runs in a fresh clone and must not depend on leftovers.
pytest -p no:cacheprovider -q -rs "$@"
