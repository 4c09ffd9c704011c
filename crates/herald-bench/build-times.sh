#!/usr/bin/env bash
# Cold and warm build times of the server (`cargo build --release -p herald`, what the README's first
# command compiles) under several release-profile settings, each from an empty target directory.
#
# Usage: crates/herald-bench/build-times.sh [variant ...]
#   variants: profile (the one in Cargo.toml) and the named ones below; default: thin-lto no-lto lean.
# OUT=DIR keeps each variant's target directory (for benchmarking its binary) and the timings
# reports; without it they go to a temporary directory that is removed at the end.
# Each variant is a set of CARGO_PROFILE_RELEASE_* overrides (and features), so Cargo.toml is not
# edited.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
keep="${OUT:-}"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
[[ -z "$keep" ]] && trap 'rm -rf "$out"' EXIT
# The committed tree (HEAD), so that edits made meanwhile do not change what is measured.
src="$out/src"
rm -rf "$src"
mkdir -p "$src"
git -C "$root" archive HEAD | tar -x -C "$src"
cd "$src"
echo "source: $(git -C "$root" rev-parse --short HEAD)"

declare -A variants=(
    [profile]=""
    # Thin LTO across crates and 4 codegen units: the release profile until 2026-12-07.
    [thin-lto]="CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4"
    # No cross-crate LTO, 16 codegen units.
    [no-lto]="CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16"
    # No cross-crate LTO, the profile's 4 codegen units (no finer cut of every crate).
    [no-lto-4]="CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4"
    # The same without line tables (backtraces lose file:line; panics still name the message).
    [no-lto-nodebug]="CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false"
    # no-lto without the optional engines and stores (`--no-default-features`).
    [lean]="CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16"
)
declare -A features=([lean]="--no-default-features")
order=(thin-lto no-lto lean)
[[ $# -gt 0 ]] && order=("$@")

printf '%-16s %10s %10s %10s %10s %12s\n' variant cold_s cold_cpu_s warm_s warm_cpu_s binary_bytes
for v in "${order[@]}"; do
    [[ -v "variants[$v]" ]] || { echo "unknown variant $v" >&2; exit 2; }
    dir="$out/$v"
    rm -rf "$dir"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    run() { env ${variants[$v]} CARGO_TARGET_DIR="$dir/target" /usr/bin/time -f '%e %U %S' -o "$dir/$1.time" \
        cargo build --release --locked -p herald ${features[$v]:-} --timings >"$dir/$1.log" 2>&1; }
    run cold
    cp "$dir/target/cargo-timings/cargo-timing.html" "$dir/cold-timings.html" 2>/dev/null || true
    # A one-line change in the server crate: what a developer waits for after an edit.
    touch crates/herald/src/main.rs
    run warm
    read -r cw cu cs <"$dir/cold.time"
    read -r ww wu ws <"$dir/warm.time"
    printf '%-16s %10.0f %10.0f %10.1f %10.1f %12s\n' "$v" "$cw" "$(echo "$cu + $cs" | bc)" \
        "$ww" "$(echo "$wu + $ws" | bc)" "$(stat -c %s "$dir/target/release/herald")"
done
