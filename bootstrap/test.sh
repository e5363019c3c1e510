#!/usr/bin/env bash
# The whole CI job, exactly as a newcomer runs it: lint, format, types, every test.
# Usage: bash bootstrap/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"

# The Redfish emulator the BMC and fencing tests run, in its own virtualenv (built once).
bash bootstrap/sushy-venv.sh

echo "== ruff check"
ruff check meshd tests benchmarks
echo "== ruff format --check"
ruff format --check meshd tests benchmarks
echo "== mypy --strict meshd"
mypy --strict meshd
echo "== pytest"
# -p no:cacheprovider: CI runs in a fresh clone and must not depend on leftovers.
pytest -p no:cacheprovider -q -rs "$@"
