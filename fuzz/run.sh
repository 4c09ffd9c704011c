#!/usr/bin/env bash
# Builds the fuzz targets on the stable toolchain and runs each one for a few seconds.
#
#   fuzz/run.sh                  every target, FUZZ_SECONDS (default 5) each
#   fuzz/run.sh frame            one target
#   FUZZ_SECONDS=600 fuzz/run.sh frame
#
# cargo-fuzz needs nightly only for its sanitizer flag (-Zsanitizer=address); the
# coverage instrumentation libFuzzer feeds on is plain stable codegen options, so
# they are passed here directly (the same ones cargo-fuzz passes). Without
# AddressSanitizer a crash is a panic, an abort, an overflow (overflow checks and
# debug assertions are on) or a timeout/out-of-memory, which is what safe Rust needs.
#
# Built into target/fuzz (its own target dir: these RUSTFLAGS would otherwise
# rebuild the workspace). Each run starts from the committed seeds in
# fuzz/seeds/<target> plus what earlier runs found (target/fuzz/corpus/<target>);
# a crashing input is written to target/fuzz/artifacts/<target>/. Exits non-zero
# when a target does not build or crashes. Prints one line per target:
#   fuzz: <target>: ok (<runs> runs in <s> s)   or   fuzz: <target>: FAILED (...)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/target/fuzz"
seconds="${FUZZ_SECONDS:-5}"
host="$(rustc -vV | sed -n 's/^host: //p')"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$here"/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# --target keeps RUSTFLAGS off build scripts and proc macros (they must not be
# instrumented: they link without libFuzzer).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
echo "fuzz: building ${targets[*]} ($host, release, target dir $out)"
start=$SECONDS
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
if ! cargo build --manifest-path "$here/Cargo.toml" --target-dir "$out" --target "$host" \
  --release --locked "${bin_args[@]}"; then
  echo "fuzz: build FAILED (if only fuzz/Cargo.lock is stale: cargo update --manifest-path fuzz/Cargo.toml -w)" >&2
  for t in "${targets[@]}"; do echo "fuzz: $t: FAILED (not built)"; done
  exit 1
fi
echo "fuzz: built in $((SECONDS - start)) s"

failed=0
for t in "${targets[@]}"; do
  corpus="$out/corpus/$t"
  artifacts="$out/artifacts/$t"
  log="$out/$t.log"
  mkdir -p "$corpus" "$artifacts"
  dirs=("$corpus")  # new inputs go to the first folder, never into the committed seeds
  [ -d "$here/seeds/$t" ] && dirs+=("$here/seeds/$t")
  if "$out/$host/release/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${dirs[@]}" >"$log" 2>&1; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    if [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
      tail -n 20 "$log"
      echo "fuzz: $t: FAILED (no runs reported)"
      failed=1
    else
      echo "fuzz: $t: ok ($runs runs in $seconds s)"
    fi
  else
    status=$?
    tail -n 40 "$log"
    echo "fuzz: $t: FAILED (exit $status; crashing input in $artifacts)"
    failed=1
  fi
done
exit "$failed"
