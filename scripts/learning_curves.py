#!/usr/bin/env python3
"""Learning curves of `adcorre train` runs, with no dependency beyond the standard library.

    python3 scripts/learning_curves.py OUT_PREFIX NAME=RUN_DIR [NAME=RUN_DIR ...]

Reads each run's per-epoch metrics (`<epoch>_<dataset>_AC_<accuracy>.json`) and per-step
`training_log.csv`, and writes OUT_PREFIX.csv (one row per run and epoch: evaluation accuracy,
average per-class accuracy, mean training cross-entropy and batch accuracy) and OUT_PREFIX.svg
(evaluation accuracy and training cross-entropy per epoch, one line per run).
"""
import csv
import json
import math
import os
import re
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def read_run(path):
    epochs = {}
    for name in os.listdir(path):
        match = re.match(r"(\d+)_.+_AC_[\d.]+\.json$", name)
        if match:
            with open(os.path.join(path, name)) as f:
                metrics = json.load(f)
            epochs[int(match.group(1))] = {
                "accuracy": metrics["accuracy"],
                "average_class_accuracy": metrics["average_class_accuracy"],
            }
    # One row per step: logs written before resume cut them back may repeat the steps a killed
    # run logged past its last checkpoint; the resumed run's rows (the later ones) count.
    steps = {}
    with open(os.path.join(path, "training_log.csv")) as f:
        for row in csv.DictReader(f):
            steps[int(row["step"])] = row
    sums = {}
    for row in steps.values():
        s = sums.setdefault(int(row["epoch"]), [0.0, 0.0, 0])
        s[0] += float(row["ce"])
        s[1] += float(row["batch_accuracy"])
        s[2] += 1
    for epoch, (ce, acc, n) in sums.items():
        if epoch in epochs:
            epochs[epoch]["train_ce"] = ce / n
            epochs[epoch]["train_batch_accuracy"] = acc / n
    return [dict(epoch=e, **epochs[e]) for e in sorted(epochs)]


def panel(x0, y0, w, h, title, series, key, lo, hi):
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0 + w / 2}" y="{y0 - 8}" text-anchor="middle" font-size="13">{title}</text>']
    last_epoch = max(r["epoch"] for _, rows in series for r in rows)
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = y0 + h - h * i / 4
        out.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" font-size="10">{v:.3g}</text>')
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y}" y2="{y}" stroke="#eee"/>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 28}" text-anchor="middle" font-size="11">epoch (1..{last_epoch})</text>')
    for index, (name, rows) in enumerate(series):
        points = " ".join(
            f'{x0 + w * (r["epoch"] - 1) / max(last_epoch - 1, 1):.1f},{y0 + h - h * (r[key] - lo) / (hi - lo):.1f}'
            for r in rows if key in r)
        color = COLORS[index % len(COLORS)]
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{x0 + 8}" y="{y0 + 16 + 14 * index}" font-size="11" fill="{color}">{name}</text>')
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    prefix = sys.argv[1]
    series = []
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        series.append((name, read_run(path)))
    with open(prefix + ".csv", "w", newline="") as f:
        fields = ["run", "epoch", "accuracy", "average_class_accuracy", "train_ce", "train_batch_accuracy"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for name, rows in series:
            for row in rows:
                writer.writerow({"run": name, **row})
    accuracies = [r[k] for _, rows in series for r in rows for k in ("accuracy",)]
    ces = [r["train_ce"] for _, rows in series for r in rows if "train_ce" in r]
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="300" font-family="sans-serif">',
           '<rect width="760" height="300" fill="white"/>']
    svg += panel(60, 30, 300, 220, "evaluation accuracy", series, "accuracy", 0.0,
                 math.ceil(max(accuracies) * 10) / 10)
    svg += panel(440, 30, 300, 220, "training cross-entropy (epoch mean)", series, "train_ce",
                 math.floor(min(ces) * 100) / 100, math.ceil(max(ces) * 100) / 100)
    svg.append("</svg>")
    with open(prefix + ".svg", "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
