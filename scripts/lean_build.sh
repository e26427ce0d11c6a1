#!/usr/bin/env bash
# Dependency count and cold release build time of the smallest inference-only app
# (scripts/minimal_app: adcorre with default-features = false, features = ["flex"]).
# Usage: scripts/lean_build.sh [ADCORRE_CHECKOUT]  (default: this checkout). Builds in a fresh
# temporary target folder, so the time is a cold build (crates already downloaded).
set -euo pipefail
root="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$(dirname "$0")/minimal_app" "$work/app"
sed -i "s#path = \"../..\"#path = \"$root\"#" "$work/app/Cargo.toml"
cp "$root/Cargo.lock" "$work/app/Cargo.lock"
cd "$work/app"
cargo fetch --quiet
crates=$(cargo tree -e normal --prefix none | sed 's/ (\*)//' | sort -u | grep -vc '^minimal_app ')
start=$(date +%s.%N)
CARGO_TARGET_DIR="$work/target" cargo build --release --quiet
seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
size=$(stat -c %s "$work/target/release/minimal_app")
printf '{"crates": %d, "cold_build_seconds": %.1f, "binary_bytes": %d, "cpus": %d}\n' "$crates" "$seconds" "$size" "$(nproc)"
