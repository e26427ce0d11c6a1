#!/usr/bin/env bash
# FER-2013 on one GPU: the recipe in configs/fer2013.json, trained twice from the same seed and
# with the same time budget (240 s of training each): cross-entropy + Ad-Corre (adaptive FD, MD, ED), and
# cross-entropy only. Each arm's last checkpoint is then evaluated on PublicTest by
# `adcorre eval`. For a machine with an NVIDIA GPU and no Rust toolchain; builds nothing there.
#
# Prepare on the development machine (everything under gpu/, about 48 MB, < 64 MiB):
#   cargo build --release --features cuda --bin adcorre
#   mkdir -p gpu && strip -o gpu/adcorre target/release/adcorre && xz -9 -f gpu/adcorre   # about 8.5 MB
#   tar -C ../shared/data -cJf gpu/fer2013.tar.xz fer2013                                 # 39 MB
# Run on the GPU machine from the repository root (with the `run` tool: carry ["gpu"]):
#   bash scripts/gpu_fer2013.sh
# Results (metrics JSON, confusion PNGs, logs, GPU name, wall times) go to $OUT (or out/fer2013).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/fer2013}
config=${CONFIG:-configs/fer2013.json}   # another config (e.g. a short one) only for dry runs
start_all=$(date +%s)
work=${TMPDIR:-/tmp}/adcorre_fer2013
mkdir -p "$out" "$work/bin" "$work/runs"
bin=$work/bin/adcorre
if [ ! -x "$bin" ]; then
    if command -v xz >/dev/null; then xz -dc gpu/adcorre.xz > "$bin"
    else python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open('gpu/adcorre.xz').read())" > "$bin"; fi
    chmod +x "$bin"
fi
if [ ! -d "$work/fer2013" ]; then
    python3 -c "import tarfile; tarfile.open('gpu/fer2013.tar.xz').extractall('$work')" || exit 1
fi
data=$work/fer2013
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cp "$config" "$out/config.json"

for arm in adcorre ce_only; do
    flags=()
    [ "$arm" = ce_only ] && flags=(--ce-only)
    start=$(date +%s)
    echo "== $arm: adcorre train --dataset fer2013 --data <fer2013> --out $arm --config $config ${flags[*]}"
    timeout 420 "$bin" train --dataset fer2013 --data "$data" --out "$work/runs/$arm" \
        --config "$config" "${flags[@]}" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 60 > "$out/${arm}_train.log"
    echo "train exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s" | tee -a "$out/${arm}_train.log"
    cp "$work/runs/$arm/training_log.csv" "$out/${arm}_training_log.csv" 2>/dev/null
    last=$(ls "$work/runs/$arm" | grep '_Fer2013_AC_.*\.mpk$' | sort -n | tail -n 1)
    if [ -n "$last" ]; then
        last=$work/runs/$arm/$last
        for f in "$work/runs/$arm"/*_Fer2013_AC_*.json; do cp "$f" "$out/${arm}_epoch_$(basename "$f")"; done
        "$bin" eval --model "$last" --dataset fer2013 --data "$data" --split eval --json \
            --out "$out/${arm}_publictest" --batch 64 > /dev/null
        echo "$arm: $(basename "$last") evaluated -> ${arm}_publictest.json" | tee -a "$out/${arm}_train.log"
    fi
done
echo "wall time of the whole script: $(( $(date +%s) - start_all )) s" | tee "$out/wall.txt"
