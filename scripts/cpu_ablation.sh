#!/usr/bin/env bash
# One seed of the ablation at the shipped recipe (configs/fer2013_cpu_ablation.json): the
# Ad-Corre arm and the cross-entropy-only arm trained side by side, one CPU thread each, the
# same budget; then both epoch-10 checkpoints evaluated on PublicTest without and with
# test-time flip into results/fer2013/cpu_ablation_seed<S>_<arm>_publictest[_flip].json, the
# step logs copied to results/fer2013/logs/ and the curves of both arms drawn.
#
# About 35 minutes on 2 cores. A stopped run resumes from its last checkpoint.
# Usage: [OUT=runs/ablation] [DATA=../shared/data/fer2013] [BIN=an adcorre binary, default: built here] \
#        scripts/cpu_ablation.sh SEED
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:?usage: scripts/cpu_ablation.sh SEED}
out=${OUT:-runs/ablation}
data=${DATA:-../shared/data/fer2013}
results=results/fer2013
mkdir -p "$out"
bin=${BIN:-target/release/adcorre}
[ -n "${BIN:-}" ] || cargo build --release --bin adcorre >/dev/null
declare -A flags=([ad_corre]="" [ce_only]="--ce-only")
for arm in ad_corre ce_only; do
    RAYON_NUM_THREADS=1 "$bin" train --dataset fer2013 --data "$data" \
        --out "$out/seed${seed}_$arm" --config configs/fer2013_cpu_ablation.json --seed "$seed" \
        ${flags[$arm]} > "$out/seed${seed}_$arm.log" 2>&1 &
done
wait
for arm in ad_corre ce_only; do
    run=$out/seed${seed}_$arm
    last=$(ls "$run"/10_Fer2013_AC_*.mpk)
    for flip in false true; do
        suffix=$([ "$flip" = true ] && echo _flip || true)
        "$bin" eval --model "$last" --dataset fer2013 --data "$data" --split eval \
            --batch 64 --json --test-time-flip "$flip" \
            --out "$results/cpu_ablation_seed${seed}_${arm}_publictest$suffix" > /dev/null
    done
    cp "$run/training_log.csv" "$results/logs/cpu_ablation_seed${seed}_${arm}_training_log.csv"
done
python3 scripts/learning_curves.py "$results/cpu_ablation_seed${seed}_curves" \
    ad_corre="$out/seed${seed}_ad_corre" ce_only="$out/seed${seed}_ce_only"
