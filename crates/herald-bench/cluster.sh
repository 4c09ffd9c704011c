#!/usr/bin/env bash
# Herald nodes joined through one local redis-server, measured from outside with herald-bench:
# the scale-out scenarios of issue 20 ("How it is proven"). Every run starts its own Redis and
# nodes (HERALD_ADAPTER=redis, a fresh HERALD_REDIS_PREFIX, HERALD_PORT=0) and stops them.
#
#   crates/herald-bench/cluster.sh SCENARIO [driver options] [herald-bench options...]
#
# Scenarios (defaults in brackets; any herald-bench option given replaces the default):
#   fanout    subscribers spread over the nodes, publishers through nodes 1..--api-nodes
#             [3 nodes, API of nodes 1-2, fanout --subscribers 1000 --channels 100 --rate 1000];
#             add --publish-via alternate for consecutive events of a channel through the
#             nodes in turn; lost / duplicated / out of order per channel, local and cross-node
#             latency, CPU of every node and of Redis
#   interest  for each node count of --nodes [3,4,6], one cluster, two runs: one subscriber per
#             channel on every node ("with"), then on nodes 1..--sub-nodes [2] only ("without");
#             events through node 1 [--rate 10000 --publishers 16 --channels 100 --duration 5;
#             --subscribers follows]; each node's CPU per event in both, Redis bytes and CPU per
#             event
#   broker    fanout through node 1 [3 nodes]: Redis bytes in and out and CPU per event, with the
#             payload beside them (--payload)
#   flat      publish as fast as the APIs accept, through every node, no window, 429/503
#             counted as backpressure [--subscribers 1200 --channels 12 --publishers 12
#             --duration 10 --drain 10]:
#             deliveries/s and acknowledged events some live subscriber never got; first the
#             same on one node without Redis (the single-node figure)
#   presence  herald-bench presence with joiners and watchers spread over the nodes [3 nodes,
#             --rate 5000 --channels 10 --watchers 3 --concurrency 100 --duration 10]; with
#             --baseline the same on one node without Redis first
#   kill      node-kill: the last node holds the connections and is kill -9ed; the others' API
#             polled until its counts and members are gone; Redis SLOWLOG [3 nodes,
#             --connections 19000 --channels 500]
#   scaling   for each node count of --nodes [1,2,4,8,12]: fanout through node 1 at a fixed rate,
#             subscribers spread evenly [--subscribers 1200 --channels 100 --rate 1000
#             --duration 10]; writes scaling.csv, scaling.json and scaling.svg (broker CPU and
#             bytes per event against node count)
# With no scenario (first argument an option): fanout published through node 1 only, as before.
#
# Driver options: --nodes N (or a list for interest and scaling), --api-nodes K, --sub-nodes K,
# --baseline, --out DIR. Results: JSON per run in $OUT (default target/bench-results/cluster).
# Builds nothing: uses $HERALD_BIN (target/release/herald) and $HERALD_BENCH_BIN
# (target/release/herald-bench). Needs redis-server and redis-cli on PATH (scripts/redis.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="crates/herald-bench"
server_bin="${HERALD_BIN:-target/release/herald}"
bench_bin="${HERALD_BENCH_BIN:-target/release/herald-bench}"
out="${OUT:-target/bench-results/cluster}"
command -v redis-server >/dev/null || { echo "cluster: redis-server missing (scripts/redis.sh start)" >&2; exit 2; }
for b in "$server_bin" "$bench_bin"; do
    [[ -x "$b" ]] || { echo "cluster: $b is missing (build it first)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

scenario=legacy
if [[ $# -gt 0 && "$1" != -* ]]; then
    scenario="$1"
    shift
fi
nodes="" api_nodes="" sub_nodes=2 baseline=0
bench_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) nodes="$2"; shift 2 ;;
        --api-nodes) api_nodes="$2"; shift 2 ;;
        --sub-nodes) sub_nodes="$2"; shift 2 ;;
        --baseline) baseline=1; shift ;;
        --out) out="$2"; shift 2 ;;
        *) bench_args+=("$1"); shift ;;
    esac
done
mkdir -p "$out"

# A default for a herald-bench option, unless the command line gives it.
defaults=()
default() { # option value...
    local o="$1" a
    shift
    for a in "${bench_args[@]}"; do [[ "$a" == "$o" || "$a" == "$o="* ]] && return 0; done
    defaults+=("$o" "$@")
}

work="$(mktemp -d)"
redis_pid="" redis_port=""
node_pids=() node_ports=()
stop_cluster() {
    local p
    for p in "${node_pids[@]}" $redis_pid; do kill "$p" 2>/dev/null || true; done
    for p in "${node_pids[@]}" $redis_pid; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    node_pids=() node_ports=() redis_pid="" redis_port=""
}
trap 'stop_cluster; rm -rf "$work"' EXIT

start_redis() {
    redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 10000 >"$work/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "cluster: redis-server did not start" >&2
    cat "$work/redis.log" >&2
    exit 1
}

# start_nodes N [local]: N nodes on Redis (or one without it: "local"). Extra settings for
# every node in the array node_env.
node_env=()
start_nodes() {
    local count="$1" mode="${2:-redis}" n port adapter=()
    if [[ "$mode" == redis ]]; then
        [[ -n "$redis_pid" ]] || start_redis
        adapter=(HERALD_ADAPTER=redis "HERALD_REDIS_URL=redis://127.0.0.1:$redis_port" "HERALD_REDIS_PREFIX=bench$$-$RANDOM")
    fi
    for n in $(seq "$count"); do
        env -u HERALD_BENCH_BIN HERALD_HOST=127.0.0.1 HERALD_PORT=0 HERALD_METRICS_PORT=0 \
            HERALD_DEFAULT_APP_SUBSCRIPTION_RATE=0 "${adapter[@]}" "${node_env[@]}" \
            "$server_bin" >"$work/n$n.out" 2>"$work/n$n.err" &
        node_pids+=("$!")
        # Stopped by stop_cluster by PID; disowned, so a node killed on purpose (kill) is
        # not reported by the shell.
        disown "$!"
        port=""
        for _ in $(seq 100); do
            port="$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/n$n.out" 2>/dev/null | grep -o '[0-9]*$' || true)"
            [[ -n "$port" ]] && break
            sleep 0.1
        done
        if [[ -z "$port" ]]; then
            echo "cluster: node $n did not start" >&2
            cat "$work/n$n.out" "$work/n$n.err" >&2
            exit 1
        fi
        node_ports+=("$port")
    done
    # Nodes report ready once their Redis connections are up.
    for port in "${node_ports[@]}"; do
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    done
    echo "cluster: $count node(s) ($mode) on ports ${node_ports[*]}, pids ${node_pids[*]}${redis_port:+, redis on $redis_port (pid $redis_pid)}"
}

join() { local IFS=,; echo "$*"; }
# Ports of nodes FROM..TO (1-based).
ports_of() { join "${node_ports[@]:$(($1 - 1)):$(($2 - $1 + 1))}"; }

# bench NAME SCENARIO WS_PORTS API_PORTS [herald-bench options...]: one run against the running
# cluster, its JSON in $out/NAME.json. Its exit status is reported, not fatal.
bench() {
    local name="$1" what="$2" ws="$3" api="$4"
    shift 4
    local args=(--port "${node_ports[0]}" --ws-ports "$ws" --api-ports "$api"
        --server-pid "${node_pids[0]}" --node-pids "$(join "${node_pids[@]}")")
    [[ -n "$redis_port" ]] && args+=(--redis-addr "127.0.0.1:$redis_port")
    echo "== $name: herald-bench $what (ws ${ws}; api ${api}) $*"
    local rc=0
    timeout 900 "$bench_bin" "${args[@]}" --json "$out/$name.json" "$what" "$@" || rc=$?
    [[ $rc == 0 ]] || echo "cluster: $name: herald-bench exited with $rc"
}

report() { python3 "$here/cluster_report.py" "$@" || true; }

case "$scenario" in
legacy | fanout | broker)
    n="${nodes:-3}"
    if [[ "$scenario" == fanout ]]; then k="${api_nodes:-2}"; else k="${api_nodes:-1}"; fi
    ((k <= n)) || k="$n"
    name="$scenario-$n"
    if ((baseline)); then
        start_nodes 1 local
        bench "$name-single" fanout "${node_ports[0]}" "${node_ports[0]}" "${bench_args[@]}"
        stop_cluster
    fi
    start_nodes "$n"
    bench "$name" fanout "$(ports_of 1 "$n")" "$(ports_of 1 "$k")" "${bench_args[@]}"
    if ((baseline)); then
        report summary "$out/$name-single.json" "$out/$name.json"
    else
        report summary "$out/$name.json"
    fi
    ;;
interest)
    # One subscriber per channel on every node that has any: "with", every node has a
    # subscriber of every channel published to; "without", nodes past --sub-nodes have none.
    channels=100
    for ((i = 0; i < ${#bench_args[@]}; i++)); do
        case "${bench_args[$i]}" in
            --subscribers | --subscribers=*) echo "cluster: interest sets --subscribers itself (one per channel per node)" >&2; exit 2 ;;
            --channels) channels="${bench_args[$((i + 1))]}" ;;
            --channels=*) channels="${bench_args[$i]#--channels=}" ;;
        esac
    done
    defaults=()
    default --rate 10000
    default --publishers 16
    default --channels "$channels"
    default --duration 5
    files=()
    for n in $(echo "${nodes:-3,4,6}" | tr , ' '); do
        ((n > sub_nodes)) || { echo "cluster: interest needs more than --sub-nodes $sub_nodes nodes" >&2; exit 2; }
        start_nodes "$n"
        bench "interest-$n-with" fanout "$(ports_of 1 "$n")" "${node_ports[0]}" \
            --subscribers $((channels * n)) "${defaults[@]}" "${bench_args[@]}"
        bench "interest-$n-without" fanout "$(ports_of 1 "$sub_nodes")" "${node_ports[0]}" \
            --subscribers $((channels * sub_nodes)) "${defaults[@]}" "${bench_args[@]}"
        files+=("$out/interest-$n-with.json")
        stop_cluster
    done
    report interest --sub-nodes "$sub_nodes" "${files[@]}"
    ;;
flat)
    n="${nodes:-3}"
    defaults=(--rate 0 --no-window --backpressure-ok)
    default --subscribers 1200
    default --channels 12
    default --publishers 12
    default --duration 10
    default --drain 10
    start_nodes 1 local
    bench flat-single fanout "${node_ports[0]}" "${node_ports[0]}" "${defaults[@]}" "${bench_args[@]}"
    stop_cluster
    start_nodes "$n"
    bench "flat-$n" fanout "$(ports_of 1 "$n")" "$(ports_of 1 "${api_nodes:-$n}")" "${defaults[@]}" "${bench_args[@]}"
    report summary "$out/flat-single.json" "$out/flat-$n.json"
    ;;
presence)
    n="${nodes:-3}"
    defaults=()
    default --rate 5000
    default --channels 10
    default --watchers "$n"
    default --concurrency 100
    default --duration 10
    if ((baseline)); then
        start_nodes 1 local
        bench presence-single presence "${node_ports[0]}" "${node_ports[0]}" "${defaults[@]}" "${bench_args[@]}"
        stop_cluster
    fi
    start_nodes "$n"
    bench "presence-$n" presence "$(ports_of 1 "$n")" "${node_ports[0]}" "${defaults[@]}" "${bench_args[@]}"
    if ((baseline)); then
        report summary "$out/presence-single.json" "$out/presence-$n.json"
    else
        report summary "$out/presence-$n.json"
    fi
    ;;
kill)
    n="${nodes:-3}"
    ((n >= 2)) || { echo "cluster: kill needs at least 2 nodes" >&2; exit 2; }
    defaults=()
    default --connections 19000
    default --channels 500
    # The API's channel list reports subscription counts only where the app enables them.
    node_env=(HERALD_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT=true)
    start_nodes "$n"
    victim=$((n - 1))
    bench "kill-$n" node-kill "$(ports_of 1 $((n - 1)))" "$(ports_of 1 $((n - 1)))" \
        --victim-port "${node_ports[$victim]}" --victim-pid "${node_pids[$victim]}" "${defaults[@]}" "${bench_args[@]}"
    report summary "$out/kill-$n.json"
    ;;
scaling)
    defaults=()
    default --subscribers 1200
    default --channels 100
    default --rate 1000
    default --duration 10
    files=()
    for n in $(echo "${nodes:-1,2,4,8,12}" | tr , ' '); do
        start_nodes "$n"
        bench "scaling-$n" fanout "$(ports_of 1 "$n")" "${node_ports[0]}" "${defaults[@]}" "${bench_args[@]}"
        files+=("$out/scaling-$n.json")
        stop_cluster
    done
    report scaling --out "$out" "${files[@]}"
    ;;
*)
    echo "cluster: unknown scenario $scenario (fanout, interest, broker, flat, presence, kill, scaling)" >&2
    exit 2
    ;;
esac
