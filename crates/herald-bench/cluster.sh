#!/usr/bin/env bash
# Fan-out across a three-node Herald cluster joined through a local redis-server: subscribers
# spread over the three nodes, events published through node 1's HTTP API. Reports what
# herald-bench measures plus the CPU seconds of every node and of Redis during the run.
#
#   crates/herald-bench/cluster.sh [fanout options...]
#   e.g. crates/herald-bench/cluster.sh --subscribers 3000 --channels 100 --rate 1000 --duration 10
#
# Builds nothing: uses $HERALD_BIN (target/release/herald) and $HERALD_BENCH_BIN
# (target/release/herald-bench). Needs redis-server on PATH (scripts/redis.sh start).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
server_bin="${HERALD_BIN:-target/release/herald}"
bench_bin="${HERALD_BENCH_BIN:-target/release/herald-bench}"
command -v redis-server >/dev/null || { echo "cluster: redis-server missing (scripts/redis.sh start)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

ports=()
node_pids=()
for n in 1 2 3; do
    env -u HERALD_BENCH_BIN HERALD_HOST=127.0.0.1 HERALD_PORT=0 HERALD_METRICS_PORT=0 HERALD_DEFAULT_APP_SUBSCRIPTION_RATE=0 HERALD_ADAPTER=redis \
        HERALD_REDIS_URL="redis://127.0.0.1:$redis_port" HERALD_REDIS_PREFIX="bench$$" \
        "$server_bin" >"$work/n$n.out" 2>"$work/n$n.err" &
    node_pids+=("$!")
    pids+=("$!")
    for _ in $(seq 100); do grep -q "listening on" "$work/n$n.out" 2>/dev/null && break; sleep 0.1; done
    ports+=("$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/n$n.out" | grep -o '[0-9]*$')")
done
# Nodes report ready once their Redis connections are up.
for p in "${ports[@]}"; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A before
for p in "$redis_pid" "${node_pids[@]}"; do before[$p]=$(ticks "$p"); done
start=$(date +%s.%N)

"$bench_bin" --port "${ports[0]}" --ws-ports "$(IFS=,; echo "${ports[*]}")" --server-pid "${node_pids[0]}" \
    --json "$work/fanout.json" fanout "$@"

elapsed=$(echo "$(date +%s.%N) - $start" | bc)
echo
echo "cluster CPU during the run (${elapsed%.*} s wall, including connect and drain):"
printf '  redis-server      %6.2f CPU s\n' "$(echo "($(ticks "$redis_pid") - ${before[$redis_pid]}) / $hz" | bc -l)"
n=1
for p in "${node_pids[@]}"; do
    printf '  herald node %d     %6.2f CPU s\n' "$n" "$(echo "($(ticks "$p") - ${before[$p]}) / $hz" | bc -l)"
    n=$((n + 1))
done
cp "$work/fanout.json" "${CLUSTER_JSON:-/dev/null}" 2>/dev/null || true
