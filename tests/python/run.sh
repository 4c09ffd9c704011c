#!/usr/bin/env bash
# Runs the pusher-http-python end-to-end suite against a built Herald binary.
# Creates tests/python/.venv on first use, installs requirements.txt, then runs pytest.
# HERALD_BIN overrides the server binary (default: target/release/herald).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || {
        echo "run.sh: could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        rm -rf "$venv"
        exit 1
    }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

cd "$root"
set +e
"$venv/bin/python" -m pytest -q tests/python "$@"
status=$?
set -e
exit "$status"
