#!/usr/bin/env bash
# Peer comparison on this machine's CPU, in one run: TensorFlow/Keras (the original
# implementation) and ONNX Runtime (the same fixture converted with tf2onnx) vs adcorre,
# inference of the published architecture at 224x224, batch 1 and 8. Prints the instruction set,
# each side's ms/image and the ratios ours / TensorFlow and ours / ONNX Runtime (lower is better;
# <= 1.0 is the goal).
#
# Variants of ours: Burn's generic operations with batch norm unfolded, then folded, then
# adcorre's one-pass host backbone (what `TestModels` runs on flex); on an AVX-512 CPU also the
# host pass with adcorre's own loops capped at AVX2 (`ADCORRE_HOST_ISA=avx2`).
# BASELINE_BIN=path/to/an/older/adcorre adds
# that binary's default inference to the same run (e.g. a build of an earlier commit).
# ROUNDS=N (N > 1) then also runs N interleaved rounds of ONNX Runtime, the host pass and the
# baseline and prints their medians and ratios: single runs of a shared VM swing by 10-20%.
# Last (before the rounds), the host pass and ONNX Runtime on one core each.
# HIDE_AVX512=1 runs every measured command through scripts/hide_avx512.sh: on an AVX-512 CPU
# with CPUID faulting, all peers then choose their AVX2 kernels, as on an AVX2-only machine.
#
# Needs: pip install tensorflow-cpu tf-keras tf2onnx onnxruntime (development machine only; CI does
# not run this); PYTHON names that environment's python (default python3). The ONNX file is
# converted once into target/peers/.
# Usage: [PYTHON=...] [BASELINE_BIN=...] scripts/compare_keras_cpu.sh [cargo features, e.g. "--features ndarray"]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
model=$shared/fixtures/keras/adcorre_xcp7.h5

python=${PYTHON:-python3}
if grep -qw avx512f /proc/cpuinfo; then isa="AVX-512"; elif grep -qw avx2 /proc/cpuinfo; then isa="AVX2"; else isa="no AVX2"; fi
hide=()
if [ "${HIDE_AVX512:-0}" = 1 ] && [ "$isa" = "AVX-512" ]; then
    hide=(scripts/hide_avx512.sh)
    isa="AVX2 (AVX-512 hidden from every peer by scripts/hide_avx512.sh)"
fi
echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores, instruction set $isa"

cargo build --release --bin adcorre ${1:-} >/dev/null
onnx=target/peers/adcorre_xcp7.onnx
if [ ! -s "$onnx" ]; then
    mkdir -p target/peers
    TF_USE_LEGACY_KERAS=1 "$python" "$shared/bench/keras_to_onnx.py" "$model" "$onnx" 2>/dev/null | grep dprob
fi
tf_out=$(TF_USE_LEGACY_KERAS=1 "${hide[@]}" "$python" "$shared/bench/keras_cpu_bench.py" "$model" 2>/dev/null)
echo "$tf_out"
ort_out=$("${hide[@]}" "$python" "$shared/bench/ort_bench.py" "$onnx" 10)
echo "$ort_out"
report() {
    python3 - "$1" "$2" "$3" "$4" "$5" <<'PY'
import json, sys
ours, tf_s, ort_s, batch, label = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tf_ms, ort_ms, ms = tf_s * 1e3 / batch, ort_s * 1e3 / batch, ours["ms_per_image"]
print(f"batch {batch}: {label}: {ms:.1f} ms/image; TensorFlow {tf_ms:.1f}, ratio {ms / tf_ms:.2f}; "
      f"ONNX Runtime {ort_ms:.1f}, ratio {ms / ort_ms:.2f}")
PY
}
for batch in 1 8; do
    tf_s=$(echo "$tf_out" | sed -n "s/.*bs=$batch hw=224 median=\([0-9.]*\)s.*/\1/p")
    ort_s=$(echo "$ort_out" | sed -n "s/.*bs=$batch hw=224 median=\([0-9.]*\)s.*/\1/p")
    if [ -n "${BASELINE_BIN:-}" ]; then
        report "$("${hide[@]}" "$BASELINE_BIN" bench --model "$model" --batch "$batch" --iters 5 --json)" \
            "$tf_s" "$ort_s" "$batch" "baseline $(basename "$BASELINE_BIN")"
    fi
    for variant in "--no-fold --burn-ops" "--burn-ops" ""; do
        case "$variant" in
            "--no-fold --burn-ops") label="Burn ops, batch norm unfolded" ;;
            "--burn-ops") label="Burn ops, batch norm folded" ;;
            *) label="host pass (TestModels)" ;;
        esac
        # shellcheck disable=SC2086
        report "$("${hide[@]}" ./target/release/adcorre bench --model "$model" --batch "$batch" --iters 5 --json $variant)" \
            "$tf_s" "$ort_s" "$batch" "adcorre $label"
    done
    if [ "$isa" = "AVX-512" ]; then
        # adcorre's own loops (depthwise, pooling, copies) on AVX2, as on a CPU without AVX-512;
        # the gemm crate still picks its AVX-512 products here.
        report "$(ADCORRE_HOST_ISA=avx2 ./target/release/adcorre bench --model "$model" --batch "$batch" --iters 5 --json)" \
            "$tf_s" "$ort_s" "$batch" "adcorre host pass, own loops capped at AVX2 (ADCORRE_HOST_ISA=avx2)"
    fi
done

# One core each (rayon's pool and ONNX Runtime's intra-op threads at 1): whether a gap is each
# core's speed or the split of the work across the cores.
ort_one_core=$("${hide[@]}" "$python" - "$onnx" <<'PY'
import sys, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for batch in (1, 8):
    x = np.random.rand(batch, 224, 224, 3).astype(np.float32)
    for _ in range(2):
        session.run(None, {name: x})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    print(batch, sorted(times)[2] * 1e3 / batch)
PY
)
for batch in 1 8; do
    ort_ms=$(echo "$ort_one_core" | sed -n "s/^$batch \([0-9.]*\)$/\1/p")
    ms=$(RAYON_NUM_THREADS=1 "${hide[@]}" ./target/release/adcorre bench --model "$model" --batch "$batch" --iters 5 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["ms_per_image"])')
    python3 -c "import sys; ms, ort = float(sys.argv[1]), float(sys.argv[2]); print(f'batch $batch, one core each: adcorre host pass {ms:.1f} ms/image; ONNX Runtime {ort:.1f}, ratio {ms / ort:.2f}')" "$ms" "$ort_ms"
done

if [ "${ROUNDS:-1}" -gt 1 ]; then
    rounds_out=$(mktemp)
    for _ in $(seq "$ROUNDS"); do
        "${hide[@]}" "$python" "$shared/bench/ort_bench.py" "$onnx" 10 | sed -n 's/.*bs=\([0-9]*\) .*ms_per_image=\([0-9.]*\).*/ONNX_Runtime \1 \2/p'
        for batch in 1 8; do
            for bin in ./target/release/adcorre ${BASELINE_BIN:-}; do
                ms=$("${hide[@]}" "$bin" bench --model "$model" --batch "$batch" --iters 7 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["ms_per_image"])')
                echo "$(basename "$bin") $batch $ms"
            done
        done
    done >"$rounds_out"
    python3 - "$rounds_out" "$ROUNDS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, batch, ms = line.split()
    runs[(who, int(batch))].append(float(ms))
for batch in (1, 8):
    ort_runs = runs[("ONNX_Runtime", batch)]
    ort = statistics.median(ort_runs)
    print(f"batch {batch}, {sys.argv[2]} interleaved rounds: ONNX Runtime {' '.join(f'{v:.1f}' for v in ort_runs)}")
    for who in sorted({w for w, b in runs if b == batch and w != "ONNX_Runtime"}):
        ms = statistics.median(runs[(who, batch)])
        print(f"batch {batch}, {sys.argv[2]} interleaved rounds: {who} {' '.join(f'{v:.1f}' for v in runs[(who, batch)])}; "
              f"median {ms:.1f} ms/image, ONNX Runtime {ort:.1f}, ratio {ms / ort:.2f}")
PY
    rm -f "$rounds_out"
fi
