#!/usr/bin/env bash
# Makes Redis available for the scale-out tests (crates/herald/tests/redis_link.rs and
# tests/compat/test/cluster*.test.js): `redis-server` (also run as a Sentinel with
# `--sentinel`, and as Redis Cluster nodes), `redis-sentinel` and `redis-cli` (cluster
# creation, admin commands). The tests start and kill their own processes on free
# loopback ports, so all this script has to do is make sure the binaries are installed.
#
#   scripts/redis.sh start    install Debian's redis-server, redis-sentinel and redis-tools
#                             when one is missing (apt-get; needs root, as in CI), then
#                             check they run
#   scripts/redis.sh check    exit 0 when all three are on PATH, 1 otherwise
set -Eeuo pipefail
# Any failing command ends the script with a message naming it (callers check the status).
trap 's=$?; [ "$BASH_SUBSHELL" -ne 0 ] || echo "redis.sh: FAILED (exit $s) at line $LINENO: $BASH_COMMAND" >&2' ERR

cmd=${1:-start}

have_redis() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 &&
    command -v redis-cli >/dev/null 2>&1
}

case "$cmd" in
  start)
    if ! have_redis; then
      echo "redis.sh: redis-server, redis-sentinel or redis-cli not found; installing Debian's redis-server, redis-sentinel and redis-tools" >&2
      sudo=""
      if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
          sudo="sudo"
        else
          echo "redis.sh: not root and no sudo: install them yourself (apt-get install -y redis-server redis-sentinel redis-tools)" >&2
          exit 1
        fi
      fi
      export DEBIAN_FRONTEND=noninteractive
      $sudo apt-get update
      $sudo apt-get install -y --no-install-recommends redis-server redis-sentinel redis-tools
      # The packages may start system-wide instances on 6379 and 26379; the tests do not use
      # them (they pick free ports), so they are left as the packages set them up.
    fi
    have_redis || { echo "redis.sh: redis-server, redis-sentinel or redis-cli still not on PATH after installing" >&2; exit 1; }
    redis-server --version
    redis-cli --version
    ;;
  check)
    have_redis
    ;;
  *)
    echo "usage: $0 start|check" >&2
    exit 2
    ;;
esac
