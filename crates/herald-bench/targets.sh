#!/usr/bin/env bash
# Runs the benchmark targets of BENCHMARKS.md, each scenario against a fresh server.
# Builds nothing: uses $HERALD_BIN (default target/release/herald) and $HERALD_BENCH_BIN
# (default target/release/herald-bench). JSON results go to $OUT (default target/bench-results/).
# Usage: crates/herald-bench/targets.sh [scenario-name ...]   (default: all but churn-10min and soak)
# QUIET_WAIT=SECONDS waits (at most that long) before each scenario until the machine is under
# 10% busy, so that other work on a shared machine does not skew the numbers.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
server_bin="${HERALD_BIN:-target/release/herald}"
bench_bin="${HERALD_BENCH_BIN:-target/release/herald-bench}"
out="${OUT:-target/bench-results}"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap stop_server EXIT

start_server() {
    local log="$out/server.out"
    # The server refuses HERALD_* variables it does not know, such as the bench's own. The
# presence storm reuses connections for join/leave far above the default subscription rate
# limit (100/s per connection), so the bench's server runs without it.
    env -u HERALD_BENCH_BIN HERALD_HOST=127.0.0.1 HERALD_PORT=0 HERALD_METRICS_PORT=0 HERALD_DEFAULT_APP_SUBSCRIPTION_RATE=0 "$server_bin" >"$log" 2>"$out/server.err" &
    server_pid=$!
    port=""
    for _ in $(seq 100); do
        port="$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" 2>/dev/null | sed 's/.*://' || true)"
        [[ -n "$port" ]] && return 0
        sleep 0.1
    done
    echo "targets: the server did not start" >&2
    exit 1
}

machine_busy_pct() { # over 2 seconds, from /proc/stat
    local a b ta=0 tb=0 i
    read -ra a < <(head -1 /proc/stat)
    sleep 2
    read -ra b < <(head -1 /proc/stat)
    for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
    echo $((100 - 100 * (b[4] + b[5] - a[4] - a[5]) / (tb - ta)))
}

wait_quiet() {
    local end=$((SECONDS + ${QUIET_WAIT:-0})) busy
    while ((SECONDS < end)); do
        busy="$(machine_busy_pct)"
        ((busy < 10)) && return 0
        echo "targets: machine ${busy}% busy, waiting" >&2
    done
}

bench() { # name, args...
    local name="$1"
    shift
    echo "== $name: herald-bench --server-pid PID $*"
    local limit=900
    [[ "$name" == soak ]] && limit=2400
    timeout "$limit" "$bench_bin" --port "$port" --server-pid "$server_pid" --json "$out/$name.json" "$@" || true
}

declare -A runs=(
    [idle]="idle --connections 19000 --channels 1000 --duration 5"
    # The machine's own floor under the fanout targets: the same rates and sizes through a bare
    # relay process (no server, no protocol), echoed back and fanned out to 1,000 receivers.
    [floor]="floor --connections 4 --rate 1000 --payload 100 --duration 10"
    [floor-fanout]="floor --connections 4 --receivers 1000 --groups 100 --rate 1000 --payload 100 --duration 10"
    [floor-throughput]="floor --connections 4 --receivers 1000 --groups 10 --rate 0 --payload 100 --duration 10"
    [fanout-latency]="fanout --subscribers 1000 --channels 100 --rate 1000 --payload 100 --duration 10"
    [fanout-throughput]="fanout --subscribers 1000 --channels 10 --rate 0 --payload 100 --duration 10"
    [fanout-10k-one-channel]="fanout --subscribers 10000 --channels 1 --rate 0 --payload 100 --duration 10"
    [trigger]="trigger --publishers 8 --channels 10 --payload 100 --duration 10"
    [churn]="churn --concurrency 50 --channels 10 --duration 30 --warmup 2"
    # Not in the default order (ten minutes): run it by name.
    [churn-10min]="churn --concurrency 50 --channels 10 --duration 600 --warmup 5 --max-cycles 20000000"
    [presence]="presence --channels 4 --watchers 2 --concurrency 40 --duration 10"
    # Not in the default order (thirty minutes): every load at once at the rates of issue 19's
    # row 16 (churn 1.5k/s, joins 1.1k/s, 500 subscribers at 500 events/s) plus API reads, a
    # hostile subscribe/unsubscribe flood and slow readers; one sample a minute, and after five
    # minutes of warm-up every later minute is held against the sixth (drift).
    [soak]="soak --duration 1800 --interval 60 --warmup-intervals 5 --churn-rate 1500 --churn-concurrency 60 --join-rate 1100 --join-concurrency 50 --subscribers 500 --channels 10 --rate 500"
)
order=(idle floor floor-fanout fanout-latency floor-throughput fanout-throughput fanout-10k-one-channel trigger churn presence)
[[ $# -gt 0 ]] && order=("$@")

for name in "${order[@]}"; do
    wait_quiet
    start_server
    # shellcheck disable=SC2086
    bench "$name" ${runs[$name]}
    if [[ "$name" == idle ]]; then
        # The same again on the same server: memory kept after the first close is reused, not leaked.
        # shellcheck disable=SC2086
        bench idle-again ${runs[$name]}
    fi
    stop_server
done
