#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (npm
# packages, Python packages, Debian packages, Node 22 from the npm registry), then lints,
# unit tests, and the end-to-end suites against the real release binary, the bench smoke
# run and a short run of each fuzz target.
#
# Every suite must be present and must report its own counts; they are summed into the
# last line printed, `N passed, M failed`. A failing suite does not stop the others (the
# summary covers all of them); a failing lint or build step, or a setup step that a suite
# needs, counts as one failure; lint and build failures stop the run at once. Exits 0 only
# when nothing failed. Each suite's full output is also kept in target/test-logs/.
set -uo pipefail # no -e: every status is checked below, so the summary always comes last
cd "$(dirname "$0")/.."
root=$(pwd)
logs="$root/target/test-logs"
mkdir -p "$logs"

# The Node majors the compat suite runs on: the oldest that package.json `engines` allows
# and the current LTS (node --test takes its arguments as globs from 22 on).
COMPAT_NODES=(20 22)

total_pass=0
total_fail=0
rows=()
stopped=""
t_start=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

# record NAME PASSED FAILED [NOTE]
record() {
  total_pass=$((total_pass + $2))
  total_fail=$((total_fail + $3))
  rows+=("$(printf '  %-28s %5d passed, %d failed%s' "$1" "$2" "$3" "${4:+  ($4)}")")
}

summary() {
  printf '\n==> summary (%d s; full logs in target/test-logs/)\n' $((SECONDS - t_start))
  local r
  for r in "${rows[@]}"; do printf '%s\n' "$r"; done
  [ -z "$stopped" ] || printf '  STOPPED: %s failed; the steps after it did not run\n' "$stopped"
  printf '%d passed, %d failed\n' "$total_pass" "$total_fail"
}

finish() {
  local rc=$1
  bash scripts/postgres.sh stop >/dev/null 2>&1
  if [ "$rc" -ne 0 ] && [ "$total_fail" -eq 0 ]; then record "test.sh itself" 0 1 "exit status $rc"; fi
  summary
  [ "$total_fail" -eq 0 ] && [ "$rc" -eq 0 ]
}
trap 'finish $? || exit 1' EXIT

# A lint, build or setup step: prints its output; on failure counts one failed step.
# gate NAME CMD... -> the command's status
gate() {
  local name=$1
  shift
  "$@"
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "test.sh: FAILED: $name (exit $status)" >&2
    record "$name" 0 1 "exit status $status"
  fi
  return "$status"
}

# A lint or build step that stops the run when it fails.
must() {
  gate "$@" || {
    stopped=$1
    exit 1
  }
}

# --- counters: each reads a suite's log and prints "PASSED FAILED NOTE"

# cargo test: the "test result:" line of every test binary and doc-test run.
cargo_counts() {
  awk '/^test result: /{ for (i = 1; i < NF; i++) { n = $i + 0
         if ($(i+1) ~ /^passed;/) p += n; if ($(i+1) ~ /^failed;/) f += n; if ($(i+1) ~ /^ignored;/) ig += n } }
       END { note = ig ? ig " ignored, counted as failed" : ""; print p + 0, f + ig, note }' "$1"
}

# node --test: the totals at the end (TAP `# pass N`, or spec `ℹ pass N`). Cancelled
# (timed out), skipped and todo tests count as failed: the project allows none.
node_counts() {
  awk '/^(# |ℹ )(tests|pass|fail|cancelled|skipped|todo) [0-9]+$/ { v[$2] = $3 }
       END { s = v["skipped"] + v["todo"]; note = s ? s " skipped/todo, counted as failed" : ""
             print v["pass"] + 0, v["fail"] + v["cancelled"] + s, note }' "$1"
}

# pytest -q: the last summary line ("3 failed, 40 passed, 1 skipped in 9.1s").
pytest_counts() {
  grep -E '[0-9]+ (passed|failed|errors?|skipped|xfailed|xpassed)' "$1" | grep -E ' in [0-9.]+s' | tail -n 1 |
    awk '{ for (i = 1; i < NF; i++) { n = $i + 0; w = $(i+1); sub(/[,=]+$/, "", w)
           if (w == "passed" || w == "xpassed") p += n
           else if (w == "failed" || w == "error" || w == "errors") f += n
           else if (w == "skipped" || w == "xfailed") s += n } }
         END { note = s ? s " skipped/xfailed, counted as failed" : ""; print p + 0, f + s, note }'
}

# herald-bench smoke: one "== name: …" line per scenario run; failures name the scenario.
bench_counts() {
  awk '/^== [^ ]+: / { name = $2; sub(/:$/, "", name); if (!(name in seen)) { seen[name] = 1; n++ } }
       /^smoke: [^ ]+ (FAILED|reported loss or errors|has no )/ { if (!($2 in bad)) { bad[$2] = 1; f++ } }
       END { print (n - f > 0 ? n - f : 0), f + 0, "scenarios" }' "$1"
}

# fuzz/run.sh: one "fuzz: <target>: ok|FAILED" line per target.
fuzz_counts() {
  awk '/^fuzz: [^ ]+: ok / { p++ } /^fuzz: [^ ]+: FAILED/ { f++ }
       END { print p + 0, f + 0, "targets" }' "$1"
}

# suite NAME COUNTER CMD...: runs a test suite (output shown and logged), adds its counts.
# A suite that exits non-zero with no failure counted, or that reports no test at all,
# counts as one failure.
suite() {
  local name=$1 counter=$2
  shift 2
  local log t0=$SECONDS status p f note
  log="$logs/$(printf '%s' "$name" | tr -cs 'A-Za-z0-9.' '-' | sed 's/-$//').log"
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  read -r p f note < <("$counter" "$log")
  note="${note:+$note, }$((SECONDS - t0)) s"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    f=$((f + 1))
    note="stopped after ${SUITE_LIMIT_S:-1200} s (hung), $note"
  elif [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    note="exit status $status but no failed test counted, $note"
  elif [ "$status" -eq 0 ] && [ $((p + f)) -eq 0 ]; then
    f=1
    note="no test ran, $note"
  fi
  [ "$f" -eq 0 ] || echo "test.sh: FAILED: $name ($f failed)" >&2
  record "$name" "$p" "$f" "$note"
}

# A suite that cannot run because its setup failed or its files are missing.
not_run() {
  echo "test.sh: FAILED: $1 did not run: $2" >&2
  record "$1" 0 1 "not run: $2"
}

# Prints the path of a `node` of the given major version: the machine's own when it is
# that version, else one installed from the npm registry (node-linux-<arch>) into
# tests/compat/.node<major> (git-ignored), reused while it is there.
node_bin() {
  local major=$1 arch dir bin
  if [ "$(node --version 2>/dev/null | sed 's/^v\([0-9]*\).*/\1/')" = "$major" ]; then
    command -v node
    return
  fi
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "test.sh: no node-linux package for $(uname -m)" >&2; return 1 ;;
  esac
  dir="$root/tests/compat/.node$major"
  bin="$dir/node_modules/node-linux-$arch/bin/node"
  if ! "$bin" --version 2>/dev/null | grep -q "^v$major\."; then
    echo "test.sh: installing Node $major (node-linux-$arch@$major) into $dir" >&2
    rm -rf "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "node-linux-$arch@$major" >&2 || return 1
    "$bin" --version 2>/dev/null | grep -q "^v$major\." || { echo "test.sh: $bin is not Node $major" >&2; return 1; }
  fi
  printf '%s\n' "$bin"
}

# compat_on BIN: the compat suite's npm script with that node first on PATH (the PATH is
# left alone for the machine's own node, so that the same npm and tools are found).
compat_on() {
  local path=$PATH
  [ "$1" = "$(command -v node)" ] || path="$(dirname "$1"):$PATH"
  (cd tests/compat && PATH=$path limited npm test)
}

# limited CMD...: runs CMD with a wall-clock bound (SUITE_LIMIT_S, default 20 min; a suite
# takes 3-5 min here), so that a hung test fails its suite instead of the whole CI run.
# timeout(1) signals the command's whole process group: node's per-file test processes and
# the servers they started go with it.
limited() {
  timeout --kill-after=30 "${SUITE_LIMIT_S:-1200}" "$@"
}

# ------------------------------------------------------------------------ lint and build

step "lint: cargo fmt, cargo clippy"
must "cargo fmt" cargo fmt --all -- --check
must "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

step "lean build: herald without its optional engines and stores (--no-default-features)"
must "cargo clippy (lean)" cargo clippy -p herald --no-default-features --all-targets --locked -- -D warnings

# ---------------------------------------------------------------------------- suites

# Before the cargo tests: crates/herald/tests/redis_link.rs starts its own Redis servers,
# Sentinels and Redis Cluster from these binaries (and fails, naming this script, without them).
step "Redis for the scale-out tests (scripts/redis.sh start)"
redis_ok=1
gate "redis start" bash scripts/redis.sh start || redis_ok=0

step "unit and integration tests (cargo test; a throwaway PostgreSQL for the app-store tests)"
if pg_env=$(bash scripts/postgres.sh start) && eval "$pg_env" && [ -n "${HERALD_TEST_POSTGRES_URL:-}" ]; then
  # --no-fail-fast: every test binary runs, so the counts cover all of them
  suite "cargo test" cargo_counts cargo test --workspace --locked --no-fail-fast
else
  not_run "cargo test" "scripts/postgres.sh start failed (see its messages above)"
fi

step "release build"
must "release build" cargo build --release --workspace --locked
export HERALD_BIN="$root/target/release/herald"

step "end-to-end: pusher-js and the pusher Node SDK (plus webhooks, operations, Redis scale-out)"
# ss (Debian's iproute2): HARD-16 reads the kernel's own view of the listening socket.
if ! command -v ss >/dev/null 2>&1; then
  gate "iproute2 install" bash -c 'export DEBIAN_FRONTEND=noninteractive; sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update && $sudo apt-get install -y --no-install-recommends iproute2' || true
fi
if [ ! -f tests/compat/package.json ]; then
  for major in "${COMPAT_NODES[@]}"; do not_run "compat (node $major)" "tests/compat/package.json is missing"; done
elif [ "$redis_ok" -ne 1 ]; then # redis-server for test/cluster*.test.js
  for major in "${COMPAT_NODES[@]}"; do not_run "compat (node $major)" "scripts/redis.sh start failed"; done
elif ! gate "compat npm ci" bash -c 'cd tests/compat && npm ci --no-audit --no-fund --loglevel=error'; then
  for major in "${COMPAT_NODES[@]}"; do not_run "compat (node $major)" "npm ci failed"; done
else
  for major in "${COMPAT_NODES[@]}"; do
    if bin=$(node_bin "$major"); then
      step "compat suite on Node $("$bin" --version)"
      suite "compat (node $major)" node_counts compat_on "$bin"
    else
      not_run "compat (node $major)" "no Node $major (install from the npm registry failed)"
    fi
  done
fi

step "end-to-end: the Python pusher SDK"
if [ -f tests/python/run.sh ]; then
  suite "python" pytest_counts limited bash tests/python/run.sh
else
  not_run "python" "tests/python/run.sh is missing"
fi

step "end-to-end: the debug console in headless Chromium"
if [ -f tests/console/run.sh ]; then
  suite "console" node_counts limited bash tests/console/run.sh
else
  not_run "console" "tests/console/run.sh is missing"
fi

step "herald-bench smoke run (every scenario once, small)"
if [ -f crates/herald-bench/smoke.sh ]; then
  suite "bench smoke" bench_counts limited bash crates/herald-bench/smoke.sh
else
  not_run "bench smoke" "crates/herald-bench/smoke.sh is missing"
fi

step "fuzz targets: build on stable, ${FUZZ_SECONDS:-5} s each"
if [ -f fuzz/run.sh ]; then
  suite "fuzz" fuzz_counts limited bash fuzz/run.sh
else
  not_run "fuzz" "fuzz/run.sh is missing"
fi

exit 0
