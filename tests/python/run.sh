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
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        # Debian ships venv (and the pip it bootstraps) apart from python3 itself.
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; }; then
            echo "run.sh: installing python3-venv (apt-get)" >&2
            DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-venv
        fi
        "$python" -m venv "$venv" || {
            echo "run.sh: could not create $venv (on Debian/Ubuntu: apt-get install python3-venv, as root)" >&2
            rm -rf "$venv"
            exit 1
        }
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

cd "$root"
set +e
"$venv/bin/python" -m pytest -q tests/python "$@"
status=$?
set -e
exit "$status"
