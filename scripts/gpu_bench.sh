#!/usr/bin/env bash
# GPU peer comparison, for a machine with an NVIDIA GPU, PyTorch and no Rust toolchain.
# Builds nothing there: it runs our release binary built with the `cuda` feature and the
# PyTorch reference (../shared/bench/torch_xcp.py: the same Keras-style Xception with 10 heads,
# one Adam train step) on the same GPU, and prints train-step images/s at 224x224 batch 64.
#
# Prepare on the development machine (the binary + this script stay under 64 MiB):
#   cargo build --release --features cuda --bin adcorre
#   mkdir -p gpu && strip -o gpu/adcorre target/release/adcorre && xz -9 -f gpu/adcorre   # about 8.5 MB
#   cp ../shared/bench/torch_xcp.py gpu/         # in case ../shared is not beside the checkout
# Run on the GPU machine from the repository root:
#   bash scripts/gpu_bench.sh [BATCH] [SIZE]
set -uo pipefail
cd "$(dirname "$0")/.."
batch=${1:-64}
size=${2:-224}
bin=gpu/adcorre
if [ ! -x "$bin" ] && [ -f gpu/adcorre.xz ]; then
    bin=${TMPDIR:-/tmp}/adcorre_bench/adcorre
    mkdir -p "$(dirname "$bin")"
    python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open('gpu/adcorre.xz').read())" > "$bin" && chmod +x "$bin"
fi
torch_script=""
for candidate in gpu/torch_xcp.py ../shared/bench/torch_xcp.py shared/bench/torch_xcp.py; do
    if [ -f "$candidate" ]; then torch_script=$candidate; break; fi
done

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== adcorre (Burn 0.21 CUDA), Ad-Corre loss, 10 heads, fp32"
if [ -x "$bin" ]; then
    timeout 300 "$bin" bench --backend cuda --train --heads 10 --batch "$batch" --size "$size" --iters 10 --json
    timeout 120 "$bin" bench --backend cuda --heads 10 --batch "$batch" --size "$size" --iters 10 --json
else
    echo "missing $bin: build it with --features cuda (see the top of this script)"
fi
echo "== PyTorch reference (cross-entropy step; fp32 without TF32, TF32, bf16 autocast channels-last)"
if [ -n "$torch_script" ]; then
    timeout 300 python3 "$torch_script" "fp32:$batch:$size" "tf32:$batch:$size" "bf16cl:$batch:$size"
else
    echo "torch_xcp.py not found (copy ../shared/bench/torch_xcp.py to gpu/)"
fi
