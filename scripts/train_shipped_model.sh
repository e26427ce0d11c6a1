#!/usr/bin/env bash
# Reproduces the shipped model in one command: trains configs/fer2013_cpu.json on all 28,709
# FER-2013 training faces (resuming the run in OUT if there is one), writes the last epoch's
# checkpoint with the card entries it is used with (test-time flip and centred crop 0.9; box
# crop with margin -0.06, measured against MTCNN boxes) to models/fer2013_xception_cpu.mpk, and
# evaluates that file on
# PublicTest into results/fer2013/shipped_publictest.{json,_confusion.png}.
#
# About 2 hours on 2 CPU cores (30 epochs of 898 steps; the committed run took 2 h 0 min).
# Usage: [OUT=runs/shipped] [DATA=../shared/data/fer2013] scripts/train_shipped_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/shipped}
data=${DATA:-../shared/data/fer2013}
cargo build --release --bin adcorre >/dev/null
target/release/adcorre train --dataset fer2013 --data "$data" --out "$out" --config configs/fer2013_cpu.json
last=$(ls "$out"/30_Fer2013_AC_*.mpk)
target/release/adcorre card "$last" --set-test-time-flip true --set-test-time-crop 0.9 --set-face-crop box:-0.06 \
    --out models/fer2013_xception_cpu.mpk >/dev/null
target/release/adcorre eval --model models/fer2013_xception_cpu.mpk --dataset fer2013 --data "$data" \
    --split eval --batch 64 --json --out results/fer2013/shipped_publictest
