#!/usr/bin/env bash
# Smoke test of herald-bench against a real server: every scenario once at a tiny size.
# Builds nothing. Uses $HERALD_BIN (default target/release/herald) and $HERALD_BENCH_BIN
# (default target/release/herald-bench), both relative to the repository root.
# Exits non-zero when the server does not start, or when any run reports loss or errors.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
server_bin="${HERALD_BIN:-target/release/herald}"
bench_bin="${HERALD_BENCH_BIN:-target/release/herald-bench}"
for b in "$server_bin" "$bench_bin"; do
    [[ -x "$b" ]] || { echo "smoke: $b is missing (build it first)" >&2; exit 2; }
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The server refuses HERALD_* variables it does not know, such as the bench's own.
env -u HERALD_BENCH_BIN HERALD_HOST=127.0.0.1 HERALD_PORT=0 HERALD_METRICS_PORT=0 "$server_bin" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 100); do
    port="$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/server.out" 2>/dev/null | sed 's/.*://' || true)"
    [[ -n "$port" ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$port" ]]; then
    echo "smoke: the server did not start" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
fi
echo "smoke: server pid $server_pid on 127.0.0.1:$port"

failed=0
run() {
    local name="$1"
    shift
    local json="$work/$name.json"
    echo "== $name: $*"
    if ! timeout 120 "$bench_bin" --port "$port" --server-pid "$server_pid" --strict --json "$json" "$@"; then
        echo "smoke: $name FAILED" >&2
        [[ -f "$json" ]] && cat "$json" >&2
        failed=1
        return
    fi
    if ! grep -q '"passed": true' "$json" || ! grep -q '"errors": {}' "$json"; then
        echo "smoke: $name reported loss or errors" >&2
        cat "$json" >&2
        failed=1
    fi
}

run floor floor --duration 1
run floor-fanout floor --receivers 20 --groups 5 --rate 200 --duration 1
# Runs at a rate split each latency: first and last delivery of each event, and arrival in the
# receiving socket (kernel timestamps).
measured() { # name, field...
    local name="$1" f
    shift
    for f in "$@"; do
        if ! python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; sys.exit(0 if r[sys.argv[2]]["count"] > 0 else 1)' "$work/$name.json" "$f" 2>/dev/null; then
            echo "smoke: $name has no $f" >&2
            failed=1
        fi
    done
}
measured floor-fanout latency_first_receiver latency_last_receiver delivery_spread latency_at_socket
run idle idle --connections 50 --channels 5 --duration 1 --settle 0.5
run fanout-rate fanout --subscribers 50 --channels 5 --rate 200 --duration 2 --drain 3
measured fanout-rate latency_first_subscriber latency_last_subscriber delivery_spread latency_at_socket
run fanout-flat fanout --subscribers 50 --channels 5 --rate 0 --duration 2 --drain 3
run trigger trigger --publishers 4 --channels 5 --duration 2
run churn churn --concurrency 10 --channels 5 --private --duration 2 --warmup 0.5 --settle 0.5
run presence presence --channels 2 --watchers 2 --concurrency 10 --duration 2 --drain 3
run presence-unsub presence --channels 2 --watchers 2 --concurrency 10 --leave unsubscribe --duration 2 --drain 3

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "smoke: the server died during the runs" >&2
    cat "$work/server.err" >&2
    exit 1
fi
if [[ "$failed" != 0 ]]; then
    echo "smoke: FAILED" >&2
    exit 1
fi
echo "smoke: all scenarios clean"
