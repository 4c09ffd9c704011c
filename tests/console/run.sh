#!/usr/bin/env bash
# End-to-end tests of the debug console in headless Chromium.
#
#   tests/console/run.sh                      # uses $HERALD_BIN or target/release/herald
#   UPDATE_SCREENSHOT=1 tests/console/run.sh  # also rewrites docs/console.png
#   CHROMIUM_BIN=/path/to/chrome tests/console/run.sh   # another Chromium; nothing installed
#
# Installs Debian's chromium when /usr/bin/chromium is missing and CHROMIUM_BIN is not set
# (apt-get; needs root or sudo, as in CI).
set -euo pipefail
cd "$(dirname "$0")"

if [ -n "${CHROMIUM_BIN:-}" ]; then
  [ -x "$CHROMIUM_BIN" ] || { echo "run.sh: CHROMIUM_BIN=$CHROMIUM_BIN is not an executable file" >&2; exit 1; }
elif [ ! -x /usr/bin/chromium ]; then
  echo "run.sh: /usr/bin/chromium not found; installing Debian's chromium" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      echo "run.sh: not root and no sudo: install Chromium yourself (apt-get install -y chromium) or set CHROMIUM_BIN" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends chromium
  [ -x /usr/bin/chromium ] || { echo "run.sh: /usr/bin/chromium still missing after installing" >&2; exit 1; }
fi

npm ci --no-audit --no-fund
# a glob, not the folder: node --test 22+ takes its arguments as globs
node --test --test-concurrency=1 --test-force-exit test/*.test.js
