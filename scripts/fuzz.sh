#!/usr/bin/env bash
# Runs adcorre's fuzz targets (fuzz/fuzz_targets/) with cargo-fuzz on the nightly toolchain:
# each for SECONDS_EACH seconds (default 600), JOBS at a time (default 1), starting from the
# seeds in fuzz/seeds/<target> and the corpus kept in fuzz/corpus/<target>. Prints one row per
# target: executions, edges covered (libFuzzer's cov), features, corpus size, crashes saved in
# fuzz/artifacts/<target>. Needs `cargo install cargo-fuzz`. Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${SECONDS_EACH:-600}
JOBS=${JOBS:-1}
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
cargo +nightly fuzz build >/dev/null
mkdir -p logs
run_one() {
  local target=$1
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 >"logs/$target.log" 2>&1 || true
}
export -f run_one
export SECONDS_EACH
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
echo "instruction set: $(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no avx512f'), budget ${SECONDS_EACH} s per target"
printf '%-18s %12s %8s %8s %8s %8s\n' target executions cov ft corpus crashes
for target in "${targets[@]}"; do
  log="logs/$target.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  last=$(grep -E '#[0-9]+.*cov: ' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  crashes=$(find "artifacts/$target" -type f 2>/dev/null | wc -l)
  printf '%-18s %12s %8s %8s %8s %8s\n' "$target" "$execs" "$cov" "$ft" "$corp" "$crashes"
done
