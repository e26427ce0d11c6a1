#!/usr/bin/env bash
# Kernel launches per training step of the published network at 224x224 (batch 2) on a CubeCL
# backend: Burn's wgpu backend, which runs the same CubeCL kernels, autotune and fusion as CUDA.
# Without a GPU it runs on Mesa's CPU Vulkan driver (apt-get install mesa-vulkan-drivers), slowly
# (tens of seconds per step; Burn's own layers take far longer), but the count is the same.
#
# CubeCL's profiler (CUBECL_DEBUG_OPTION=profile) logs every kernel launch and prints a summary
# table at every device sync; `adcorre bench` syncs after each step, so the last table is one
# whole training step. Prints the launches of adcorre's operations and of Burn's own layers
# (`--burn-ops`), and the kernels launched most often.
#
# Usage: scripts/count_kernel_launches.sh [size] [batch]     (defaults 224 2)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-224}
batch=${2:-2}
cargo build --release --features wgpu --bin adcorre >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for variant in "" "--burn-ops"; do
    : >"$log"
    # shellcheck disable=SC2086
    CUBECL_DEBUG_LOG=$log CUBECL_DEBUG_OPTION=profile ./target/release/adcorre bench --backend wgpu --train \
        --size "$size" --batch "$batch" --iters 1 $variant >/dev/null 2>&1
    totals=$(grep -n '^| Total' "$log" | tail -2 | cut -d: -f1 | tr '\n' ' ')
    set -- $totals
    launches=$(sed -n "${2}p" "$log" | awk -F'|' '{gsub(/ /, "", $4); print $4}')
    echo "${variant:-adcorre ops}: $launches kernel launches per training step (${size}x${size}, batch $batch)"
    # The last table's rows, between the two last totals: | kernel | ... | time | count | share % |
    sed -n "$(($1 + 1)),$(($2 - 1))p" "$log" | grep -E '% +\|$' |
        awk -F'|' '{name = $2; gsub(/^ +| +$/, "", name); count = $(NF - 2); gsub(/ /, "", count); sum[name] += count}
                   END {for (k in sum) print sum[k] "\t" k}' |
        sort -rn | head -8 | sed 's/^/    /'
done
