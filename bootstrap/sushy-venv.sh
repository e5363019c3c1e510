#!/usr/bin/env bash
# The Redfish emulator meshd's tests and demo use as blades' BMCs (sushy-tools 2.2.0,
# run by tests/integration/sushy.py), in a virtualenv of its own: its Flask stack must
# not meet meshd's dependencies. Built once, into .cache/sushy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
sushy=.cache/sushy-venv
if [[ ! -f $sushy/.sushy-tools-2.2.0 ]]; then
    echo "== sushy-tools 2.2.0 in $sushy"
    python3 -m venv "$sushy"
    "$sushy/bin/pip" install -q --disable-pip-version-check 'sushy-tools==2.2.0'
    echo 2.2.0 >"$sushy/.sushy-tools-2.2.0"
fi
