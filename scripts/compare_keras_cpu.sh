#!/usr/bin/env bash
# Peer comparison on this machine's CPU, in one run: TensorFlow/Keras (the original
# implementation) vs adcorre, inference of the published architecture at 224x224, batch 1 and 8.
# Prints each side's ms/image and the ratio ours / TensorFlow (lower is better; <= 1.0 is the goal).
#
# Variants of ours: Burn's generic operations with batch norm unfolded, then folded, then
# adcorre's one-pass host backbone (what `TestModels` runs on flex).
# BASELINE_BIN=path/to/an/older/adcorre adds
# that binary's default inference to the same run (e.g. a build of an earlier commit).
#
# Needs: pip install tensorflow-cpu tf-keras   (development machine only; CI does not run this)
# Usage: [BASELINE_BIN=...] scripts/compare_keras_cpu.sh [cargo features, e.g. "--features ndarray"]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
model=$shared/fixtures/keras/adcorre_xcp7.h5

cargo build --release --bin adcorre ${1:-} >/dev/null
tf_out=$(TF_USE_LEGACY_KERAS=1 python3 "$shared/bench/keras_cpu_bench.py" "$model")
echo "$tf_out"
report() {
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
ours, tf_s, batch, label = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tf_ms = tf_s * 1e3 / batch
print(f"batch {batch}: {label}: {ours['ms_per_image']:.1f} ms/image, "
      f"TensorFlow {tf_ms:.1f} ms/image, ratio {ours['ms_per_image'] / tf_ms:.2f}")
PY
}
for batch in 1 8; do
    tf_s=$(echo "$tf_out" | sed -n "s/.*bs=$batch hw=224 median=\([0-9.]*\)s.*/\1/p")
    if [ -n "${BASELINE_BIN:-}" ]; then
        report "$("$BASELINE_BIN" bench --model "$model" --batch "$batch" --iters 5 --json)" \
            "$tf_s" "$batch" "baseline $(basename "$BASELINE_BIN")"
    fi
    for variant in "--no-fold --burn-ops" "--burn-ops" ""; do
        case "$variant" in
            "--no-fold --burn-ops") label="Burn ops, batch norm unfolded" ;;
            "--burn-ops") label="Burn ops, batch norm folded" ;;
            *) label="host pass (TestModels)" ;;
        esac
        # shellcheck disable=SC2086
        report "$(./target/release/adcorre bench --model "$model" --batch "$batch" --iters 5 --json $variant)" \
            "$tf_s" "$batch" "adcorre $label"
    done
done
