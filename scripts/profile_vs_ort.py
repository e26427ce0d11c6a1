#!/usr/bin/env python3
"""Per-layer profile of adcorre's host inference pass beside ONNX Runtime's, on this CPU.

Runs `adcorre bench --profile --json` (its steps: im2col, read, product, depthwise, subsample,
max_pool, finish) and ONNX Runtime's own profiler (`enable_profiling`; each node's kernel time)
on the same fixture at the same batch and thread count, maps ONNX Runtime's nodes onto the
Keras layers, and prints per layer and per kind of step: ms per run for each side, ours / ONNX
Runtime, and each side's GFLOP/s for the matrix products and the depthwise convolutions.

ONNX Runtime's nodes: after its NCHWc rewrite, a pointwise convolution is named after the op it
absorbed (the next ReLU or batch norm), so nodes are mapped by order and shape: a convolution
with groups > 1 is the depthwise step of the layer in its name, the 1x1 stride-1 convolution
after it that layer's product, the 1x1 stride-2 ones the shortcuts of blocks 2, 3, 4 and 13 in
turn, and the 3x3 ones with one group the stem; MaxPool nodes carry their block's name. Every
other node (ReLUs of a residual block's input, layout reorders, the pooling and heads) is
"other". Our `head` (last ReLU and mean) goes to "other" too.

Usage: profile_vs_ort.py ONNX [--batch 1] [--threads 1] [--runs 10] [--bin target/release/adcorre]
       [--model ../shared/fixtures/keras/adcorre_xcp7.h5]
One thread (the default) gives each step's wall time on both sides; with more threads ours
times the steps of a pass, whose own work is split across the threads.
Needs onnxruntime and onnx (development machine only; CI does not run this).
"""
import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

SHORTCUT_BLOCKS = [2, 3, 4, 13]


def ort_profile(onnx_path, batch, threads, runs, warmups=3):
    """Median kernel time (ms) per ONNX Runtime node over `runs` runs, in execution order, and
    the nodes' attributes from the optimised graph."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        options.log_severity_level = 3
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        shape = session.get_inputs()[0].shape
        x = np.random.rand(batch, *[d if isinstance(d, int) else 224 for d in shape[1:]]).astype(np.float32)
        for _ in range(warmups + runs):
            session.run(None, {name: x})
        events = json.load(open(session.end_profiling()))
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    attributes = {node.name: (node.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}) for node in graph.node}
    times = collections.defaultdict(list)
    order = []
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        if node not in times:
            order.append(node)
        times[node].append(event["dur"] / 1e3)
    return [(node, statistics.median(times[node][warmups:] or times[node]), *attributes.get(node, ("?", {}))) for node in order]


def ort_layers(nodes):
    """ONNX Runtime's ms per (layer, step), mapped onto Keras' layers (module docstring)."""
    mapped = collections.OrderedDict()
    last_depthwise = None
    shortcuts = iter(SHORTCUT_BLOCKS)
    for node, ms, op, attrs in nodes:
        layer, step = "other", "other"
        kernel, strides, group = attrs.get("kernel_shape", []), attrs.get("strides", []), attrs.get("group", 1)
        named = re.search(r"block\d+_(sepconv\d|conv\d|pool)", node)
        if op == "Conv" and group > 1 and named:
            layer, step = named.group(0), "depthwise"
            last_depthwise = layer
        elif op == "Conv" and kernel == [1, 1] and strides == [1, 1] and last_depthwise:
            layer, step = last_depthwise, "product"
            last_depthwise = None
        elif op == "Conv" and kernel == [1, 1] and strides == [2, 2]:
            layer, step = f"block{next(shortcuts, '?')}_shortcut", "product"
        elif op == "Conv" and kernel == [3, 3] and group == 1 and named:
            layer, step = named.group(0), "product"
        elif op == "MaxPool" and named:
            layer, step = named.group(0), "max_pool"
        key = (layer, step)
        mapped[key] = mapped.get(key, 0.0) + ms
    return mapped


def our_layers(binary, model, batch, threads, runs):
    """Our ms and GFLOP/s per (layer, step), the whole host pass' ms per run (its steps and
    what runs between them) and the median ms per run of the whole network."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    command = [binary, "bench", "--model", model, "--batch", str(batch), "--iters", str(runs), "--profile", "--json"]
    report = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
    steps = collections.OrderedDict()
    whole_pass = 0.0
    for entry in report["profile"]["steps"]:
        if entry["step"] == "whole pass":
            whole_pass += entry["ms_per_run"]
            continue
        # Ours splits the stem into im2col (or the read of a direct convolution's input) and
        # product; ONNX Runtime's stem is one kernel.
        step = "product" if entry["step"] in ("im2col", "read") else entry["step"]
        key = ("other", "other") if entry["layer"] == "head" else (entry["layer"], step)
        ms, flops = steps.get(key, (0.0, 0.0))
        steps[key] = (ms + entry["ms_per_run"], flops + (entry["gflops"] or 0.0) * entry["ms_per_run"] * 1e6)
    return steps, whole_pass, report["median_s"] * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--bin", default="target/release/adcorre")
    parser.add_argument("--model", default="../shared/fixtures/keras/adcorre_xcp7.h5")
    args = parser.parse_args()

    ours, our_pass, our_median = our_layers(args.bin, args.model, args.batch, args.threads, args.runs)
    theirs = ort_layers(ort_profile(args.onnx, args.batch, args.threads, args.runs))
    print(f"batch {args.batch}, {args.threads} thread(s), {args.runs} runs; ms per run (ours: sums; ONNX Runtime: medians per node)")
    print(f"{'layer':<18} {'step':<10} {'ours':>8} {'ORT':>8} {'ratio':>6} {'our GFLOP/s':>12} {'ORT GFLOP/s':>12}")
    totals = collections.OrderedDict()
    for key in list(ours) + [key for key in theirs if key not in ours]:
        our_ms, flops = ours.get(key, (0.0, 0.0))
        their_ms = theirs.get(key, 0.0)
        total = totals.setdefault(key[1], [0.0, 0.0, 0.0])
        total[0] += our_ms
        total[1] += their_ms
        total[2] += flops
        ratio = f"{our_ms / their_ms:6.2f}" if their_ms > 0 else ""
        rates = f"{flops / our_ms / 1e6:12.1f} {flops / their_ms / 1e6:12.1f}" if flops > 0 and our_ms > 0 and their_ms > 0 else ""
        print(f"{key[0]:<18} {key[1]:<10} {our_ms:8.3f} {their_ms:8.3f} {ratio} {rates}")
    print("totals per kind of step:")
    for step, (our_ms, their_ms, flops) in totals.items():
        ratio = f"{our_ms / their_ms:6.2f}" if their_ms > 0 else ""
        rates = f"{flops / our_ms / 1e6:12.1f} {flops / their_ms / 1e6:12.1f}" if flops > 0 and our_ms > 0 and their_ms > 0 else ""
        print(f"{'all':<18} {step:<10} {our_ms:8.3f} {their_ms:8.3f} {ratio} {rates}")
    our_sum = sum(total[0] for total in totals.values())
    their_sum = sum(total[1] for total in totals.values())
    print(f"{'all':<18} {'steps':<10} {our_sum:8.3f} {their_sum:8.3f} {our_sum / their_sum:6.2f}")
    print(f"ours: host pass {our_pass:.1f} ms (its steps and what runs between them), whole network {our_median:.1f} ms (median)")


if __name__ == "__main__":
    main()
