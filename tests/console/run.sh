#!/usr/bin/env bash
# End-to-end tests of the debug console in headless Chromium.
#
#   tests/console/run.sh                      # uses $HERALD_BIN or target/release/herald
#   UPDATE_SCREENSHOT=1 tests/console/run.sh  # also rewrites docs/console.png
#
# Installs Debian's chromium when /usr/bin/chromium is missing (needs root, as in CI).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y chromium
fi

npm ci --no-audit --no-fund
# a glob, not the folder: node --test 22+ takes its arguments as globs
node --test --test-concurrency=1 --test-force-exit test/*.test.js
