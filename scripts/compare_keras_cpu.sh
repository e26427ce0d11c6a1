#!/usr/bin/env bash
# Peer comparison on this machine's CPU, in one run: TensorFlow/Keras (the original
# implementation) vs adcorre, inference of the published architecture at 224x224, batch 1 and 8.
# Prints each side's ms/image and the ratio ours / TensorFlow (lower is better; <= 1.0 is the goal).
#
# Needs: pip install tensorflow-cpu tf-keras   (development machine only; CI does not run this)
# Usage: scripts/compare_keras_cpu.sh [cargo features, e.g. "--features ndarray"]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
model=$shared/fixtures/keras/adcorre_xcp7.h5

cargo build --release --bin adcorre ${1:-} >/dev/null
tf_out=$(TF_USE_LEGACY_KERAS=1 python3 "$shared/bench/keras_cpu_bench.py" "$model")
echo "$tf_out"
for batch in 1 8; do
    tf_s=$(echo "$tf_out" | sed -n "s/.*bs=$batch hw=224 median=\([0-9.]*\)s.*/\1/p")
    for variant in --no-fold ""; do
        ours=$(./target/release/adcorre bench --model "$model" --batch "$batch" --iters 5 --json $variant)
        python3 - "$ours" "$tf_s" "$batch" <<'PY'
import json, sys
ours, tf_s, batch = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
tf_ms = tf_s * 1e3 / batch
variant = "batch norm folded" if ours["batch_norm_folded"] else "unfolded (before)"
print(f"batch {batch}: adcorre {ours['backend']} {variant}: {ours['ms_per_image']:.1f} ms/image, "
      f"TensorFlow {tf_ms:.1f} ms/image, ratio {ours['ms_per_image'] / tf_ms:.2f}")
PY
    done
done
