#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (npm
# packages, Python packages, Debian packages), then lints, unit tests, and the end-to-end
# suites against the real release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "lint: cargo fmt, cargo clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "lean build: herald without its optional engines and stores (--no-default-features)"
cargo clippy -p herald --no-default-features --all-targets --locked -- -D warnings

step "unit and integration tests (cargo test; a throwaway PostgreSQL for the app-store tests)"
eval "$(bash scripts/postgres.sh start)"
trap 'bash scripts/postgres.sh stop' EXIT
cargo test --workspace --locked

step "release build"
cargo build --release --workspace --locked
export HERALD_BIN="$root/target/release/herald"

if [ -d tests/compat ]; then
  step "end-to-end: pusher-js and the pusher Node SDK (plus webhooks, operations, Redis scale-out)"
  bash scripts/redis.sh start   # redis-server for tests/compat/test/cluster.test.js
  (cd tests/compat && npm ci --no-audit --no-fund --loglevel=error && npm test)
fi

if [ -f tests/python/run.sh ]; then
  step "end-to-end: the Python pusher SDK"
  bash tests/python/run.sh
fi

if [ -f tests/console/run.sh ]; then
  step "end-to-end: the debug console in headless Chromium"
  bash tests/console/run.sh
fi

if [ -f crates/herald-bench/smoke.sh ]; then
  step "herald-bench smoke run (every scenario once, small)"
  bash crates/herald-bench/smoke.sh
fi

step "all suites passed"
