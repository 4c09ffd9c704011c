#!/usr/bin/env bash
# Makes `redis-server` available for the scale-out end-to-end tests
# (tests/compat/test/cluster.test.js). The tests start and kill their own
# redis-server processes on free loopback ports, so all this script has to do is
# make sure the binary is installed.
#
#   scripts/redis.sh start    install Debian's redis-server when it is missing
#                             (apt-get; needs root, as in CI), then check it runs
#   scripts/redis.sh check    exit 0 when redis-server is on PATH, 1 otherwise
set -Eeuo pipefail
# Any failing command ends the script with a message naming it (callers check the status).
trap 's=$?; [ "$BASH_SUBSHELL" -ne 0 ] || echo "redis.sh: FAILED (exit $s) at line $LINENO: $BASH_COMMAND" >&2' ERR

cmd=${1:-start}

have_redis() { command -v redis-server >/dev/null 2>&1; }

case "$cmd" in
  start)
    if ! have_redis; then
      echo "redis.sh: redis-server not found; installing Debian's redis-server" >&2
      sudo=""
      if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
          sudo="sudo"
        else
          echo "redis.sh: not root and no sudo: install redis-server yourself (apt-get install -y redis-server)" >&2
          exit 1
        fi
      fi
      export DEBIAN_FRONTEND=noninteractive
      $sudo apt-get update
      $sudo apt-get install -y --no-install-recommends redis-server
      # The package may start a system-wide instance on 6379; the tests do not use it
      # (they pick free ports), so it is left as the package set it up.
    fi
    have_redis || { echo "redis.sh: redis-server still not on PATH after installing" >&2; exit 1; }
    redis-server --version
    ;;
  check)
    have_redis
    ;;
  *)
    echo "usage: $0 start|check" >&2
    exit 2
    ;;
esac
