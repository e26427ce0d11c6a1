#!/usr/bin/env python3
"""Mean and spread of an ablation's arms over seeds, from `adcorre eval --json` files.

    python3 scripts/ablation_summary.py RESULTS_PREFIX ARM_A ARM_B SEED [SEED ...]

Reads RESULTS_PREFIX_seed<S>_<ARM>_publictest.json (and ..._publictest_flip.json where present)
and prints, per metric, each arm's per-seed values, mean and sample standard deviation, and the
per-seed differences A - B with their mean and standard deviation. Standard library only.
"""
import json
import os
import statistics
import sys


def load(prefix, seed, arm, suffix):
    path = f"{prefix}_seed{seed}_{arm}_publictest{suffix}.json"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def describe(values):
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    prefix, arm_a, arm_b, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    for suffix, title in [("", "PublicTest"), ("_flip", "PublicTest, test-time flip")]:
        runs = {arm: [load(prefix, s, arm, suffix) for s in seeds] for arm in (arm_a, arm_b)}
        if any(r is None for rs in runs.values() for r in rs):
            continue
        print(f"### {title} ({len(seeds)} seeds: {', '.join(seeds)})\n")
        print(f"| metric | {arm_a} per seed | {arm_a} mean ± sd | {arm_b} per seed | {arm_b} mean ± sd | {arm_a} - {arm_b} per seed | difference mean ± sd |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for key, name in [("accuracy", "accuracy"), ("average_class_accuracy", "average per class")]:
            a = [r[key] for r in runs[arm_a]]
            b = [r[key] for r in runs[arm_b]]
            d = [x - y for x, y in zip(a, b)]
            per = lambda v: ", ".join(f"{100 * x:.2f}" for x in v)
            print(f"| {name} | {per(a)} | {describe(a)} | {per(b)} | {describe(b)} | {', '.join(f'{100 * x:+.2f}' for x in d)} | {describe(d)} |")
        print()


if __name__ == "__main__":
    main()
