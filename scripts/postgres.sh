#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests of the `postgres` app store
# (crates/herald/tests/store_conformance.rs).
#
#   eval "$(scripts/postgres.sh start)"   install Debian's postgresql when initdb is missing
#                                         (apt-get; needs root, as in CI), create a cluster in a
#                                         temporary directory, start it on a free loopback port
#                                         with trust auth, create the database herald_test, and
#                                         print `export HERALD_TEST_POSTGRES_URL=…`
#   scripts/postgres.sh stop              stop the cluster that `start` made and remove it
#   scripts/postgres.sh url               print the URL of the running throwaway cluster
#
# Only the export line goes to stdout; progress goes to stderr.
set -Eeuo pipefail
# Any failing command ends the script with a message naming it (callers check the status).
trap 's=$?; [ "$BASH_SUBSHELL" -ne 0 ] || echo "postgres.sh: FAILED (exit $s) at line $LINENO: $BASH_COMMAND" >&2' ERR

cmd=${1:-start}
state="${TMPDIR:-/tmp}/herald-postgres-test.$(id -u).dir"

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  # Debian keeps the server tools under /usr/lib/postgresql/<version>/bin; take the newest.
  local name=$1 found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ] && command -v "$name" >/dev/null 2>&1; then
    found=$(command -v "$name")
  fi
  printf '%s' "$found"
}

install_postgres() {
  log "initdb not found; installing Debian's postgresql"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      log "not root and no sudo: install PostgreSQL yourself (apt-get install -y postgresql)"
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update >&2
  $sudo apt-get install -y --no-install-recommends postgresql >&2
}

# Runs a command as the cluster's owner: `postgres` when we are root (the server refuses to run
# as root), ourselves otherwise.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

port_free() {
  # Nothing accepts on the port (a refused connection means free).
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
  local port tries=0
  while [ $tries -lt 100 ]; do
    port=$(( 20000 + RANDOM % 30000 ))
    if port_free "$port"; then
      echo "$port"
      return
    fi
    tries=$((tries + 1))
  done
  log "no free loopback port found"
  exit 1
}

stop_cluster() {
  [ -f "$state" ] || return 0
  local dir
  dir=$(cat "$state")
  if [ -n "$dir" ] && [ -d "$dir/data" ]; then
    local pg_ctl
    pg_ctl=$(find_bin pg_ctl)
    if [ -n "$pg_ctl" ]; then
      as_owner "$pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
  fi
  case "$dir" in
    */herald-pg.*) rm -rf "$dir" ;;
  esac
  rm -f "$state"
}

case "$cmd" in
  start)
    stop_cluster
    initdb=$(find_bin initdb)
    if [ -z "$initdb" ]; then
      install_postgres
      initdb=$(find_bin initdb)
    fi
    [ -n "$initdb" ] || { log "initdb still missing after installing postgresql"; exit 1; }
    bindir=$(dirname "$initdb")
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
      log "running as root but there is no 'postgres' user to own the cluster (reinstall postgresql)"
      exit 1
    fi

    dir=$(mktemp -d "${TMPDIR:-/tmp}/herald-pg.XXXXXX")
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    echo "$dir" > "$state"

    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
      --no-locale --no-sync >"$dir/initdb.log" 2>&1 || {
      log "initdb failed:"; cat "$dir/initdb.log" >&2; exit 1; }

    port=$(pick_port)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null || {
      log "the server did not start:"; cat "$dir/server.log" >&2 || true; exit 1; }

    "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
      -c "CREATE DATABASE herald_test" >/dev/null || {
      log "cannot create the database herald_test"; exit 1; }

    url="postgres://postgres@127.0.0.1:$port/herald_test"
    echo "$url" > "$dir/url"
    log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir; stop with scripts/postgres.sh stop)"
    echo "export HERALD_TEST_POSTGRES_URL=$url"
    ;;
  stop)
    stop_cluster
    ;;
  url)
    [ -f "$state" ] && [ -f "$(cat "$state")/url" ] || { log "no throwaway cluster is running"; exit 1; }
    cat "$(cat "$state")/url"
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
