#!/usr/bin/env bash
# What Redis itself spends per PUBLISH on this machine, with no Herald in the path: the floor
# under the broker cost per event that `cluster.sh broker` reports.
#
#   crates/herald-bench/redis-floor.sh [SUBSCRIBERS=3] [PAYLOAD_BYTES=250] [MESSAGES=20000]
#
# Starts its own redis-server on a free loopback port, SUBSCRIBERS `redis-cli SUBSCRIBE`
# clients on one channel, then `redis-benchmark` publishing MESSAGES messages of PAYLOAD_BYTES
# from one connection without pipelining (every PUBLISH a round trip of its own, as Herald's
# publisher sends them at low rates), and prints Redis's CPU (INFO used_cpu_sys + used_cpu_user)
# and bytes out per message. Stops everything it started.
set -euo pipefail

subs=${1:-3}
payload=${2:-250}
n=${3:-20000}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    redis-cli -p "$port" PING >/dev/null 2>&1 && break
    sleep 0.1
done
for _ in $(seq "$subs"); do
    redis-cli -p "$port" SUBSCRIBE floor >/dev/null &
    pids+=($!)
done
until [ "$(redis-cli -p "$port" PUBSUB NUMSUB floor | tail -1)" = "$subs" ]; do sleep 0.1; done

info() { redis-cli -p "$port" INFO "$1" | tr -d '\r'; }
field() { sed -n "s/^$1://p"; }
cpu() { info cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f", s }'; }

cpu0=$(cpu)
out0=$(info stats | field total_net_output_bytes)
body=$(head -c "$payload" /dev/zero | tr '\0' 'x')
redis-benchmark -p "$port" -c 1 -n "$n" -q PUBLISH floor "$body" | tr '\r' '\n' | tail -1
cpu1=$(cpu)
out1=$(info stats | field total_net_output_bytes)

python3 - "$subs" "$payload" "$n" "$cpu0" "$cpu1" "$out0" "$out1" <<'EOF'
import sys
subs, payload, n = map(int, sys.argv[1:4])
cpu0, cpu1 = float(sys.argv[4]), float(sys.argv[5])
out0, out1 = int(sys.argv[6]), int(sys.argv[7])
print(f"subscribers {subs}, payload {payload} B, messages {n}")
print(f"Redis CPU per PUBLISH: {(cpu1 - cpu0) / n * 1e6:.1f} us")
print(f"Redis bytes out per PUBLISH: {(out1 - out0) / n:.1f} (per subscriber copy {(out1 - out0) / n / max(subs, 1):.1f}, the reply included)")
EOF
