#!/usr/bin/env bash
# Training-speed peer comparison on this machine's CPU, in one run: one Adam training step of
# adcorre (forward, Ad-Corre loss, backward, Adam) against PyTorch eager (cross-entropy, torch's
# default threads) on the same architecture, for
#   - the published network at 96x96, batch 8 and at 224x224, batch 2
#     (PyTorch: ../shared/bench/torch_cpu_train.py), and
#   - the reduced FER-2013 network of configs/fer2013_cpu_reduced.json, 48x48, batch 32
#     (PyTorch: scripts/torch_xception_train.py, the same Keras-style network).
# ROUNDS rounds (default 3) alternate the two sides so that machine drift hits both; each prints
# ms per step and ratio ours / PyTorch (lower is better; <= 1.0 is the goal), then the medians.
# "cores" is the CPU time our process used per second of wall time over the timed steps.
#
# BASELINE_BIN=path/to/an/older/adcorre adds that binary to every round (e.g. a build of the
# commit before the training operations); BURN_OPS=1 adds `--burn-ops` (Burn's own layers).
#
# Needs: a venv with torch (pip install torch==2.2.2 "numpy<2"), as PYTHON (default python3).
# Usage: [ROUNDS=3] [PYTHON=...] [BASELINE_BIN=...] [BURN_OPS=1] scripts/compare_torch_cpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
reduced=configs/fer2013_cpu_reduced.json

cargo build --release --bin adcorre >/dev/null
ours=./target/release/adcorre
isa=$(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx512f|avx2' | sort -r | head -1)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores, widest vector ISA in use: ${isa:-unknown}"

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }

bench_ours() { # label binary args...
    local label=$1 bin=$2; shift 2
    local json
    json=$("$bin" bench --train --iters 5 --json "$@")
    local ms cores
    ms=$(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["median_s"] * 1e3, 1))')
    cores=$(echo "$json" | python3 -c 'import json,sys; c = json.load(sys.stdin).get("cpu_per_wall"); print("%.2f" % c if c else "?")')
    echo "  $label: $ms ms per step ($cores cores)"
    record "$label" "$ms"
}

for round in $(seq "$rounds"); do
    echo "round $round"
    torch=$("$python" "$shared/bench/torch_cpu_train.py" 8:96 2:224)
    torch_reduced=$("$python" scripts/torch_xception_train.py "$reduced")
    for spec in "8 96" "2 224"; do
        set -- $spec
        ms=$(echo "$torch" | sed -n "s/.*bs=$1 hw=$2 train_step_median=\([0-9.]*\)s.*/\1/p" | python3 -c 'import sys; print(round(float(sys.stdin.read()) * 1e3, 1))')
        echo "  pytorch $2x$2 batch $1: $ms ms per step"
        record "pytorch $2 b$1" "$ms"
        bench_ours "adcorre $2 b$1" "$ours" --size "$2" --batch "$1"
        if [ -n "${BURN_OPS:-}" ]; then bench_ours "adcorre burn-ops $2 b$1" "$ours" --size "$2" --batch "$1" --burn-ops; fi
        if [ -n "${BASELINE_BIN:-}" ]; then bench_ours "baseline $2 b$1" "$BASELINE_BIN" --size "$2" --batch "$1"; fi
    done
    ms=$(echo "$torch_reduced" | sed -n 's/.*train_step_median=\([0-9.]*\)s.*/\1/p' | python3 -c 'import sys; print(round(float(sys.stdin.read()) * 1e3, 1))')
    echo "  pytorch reduced 48 b32: $ms ms per step"
    record "pytorch reduced" "$ms"
    bench_ours "adcorre reduced" "$ours" --config "$reduced"
    if [ -n "${BURN_OPS:-}" ]; then bench_ours "adcorre burn-ops reduced" "$ours" --config "$reduced" --burn-ops; fi
    if [ -n "${BASELINE_BIN:-}" ]; then
        # Older binaries have no --config: the same network through a model file would need one.
        "$BASELINE_BIN" bench --help | grep -q -- --config && bench_ours "baseline reduced" "$BASELINE_BIN" --config "$reduced"
    fi
done

median() { echo "$@" | tr ' ' '\n' | sort -n | awk 'NF {a[++n] = $1} END {print a[int((n + 1) / 2)]}'; }
echo "medians over $rounds rounds (ms per step; ratio to PyTorch of the same configuration):"
for config in "96 b8" "224 b2" "reduced"; do
    torch_ms=$(median ${results["pytorch $config"]})
    echo "  pytorch $config: $torch_ms"
    for side in "adcorre" "adcorre burn-ops" "baseline"; do
        key="$side $config"
        [ -n "${results[$key]:-}" ] || continue
        ms=$(median ${results[$key]})
        echo "  $key: $ms  ratio $(python3 -c "print(round($ms / $torch_ms, 2))")"
    done
done
