"""Peer timing for `adcorre bench --detect`: facenet-pytorch's MTCNN (keep_all, package
defaults) on the CPU, median milliseconds per image over ITERS runs after two warm-up runs.

usage: python facenet_detect_bench.py ITERS IMAGE...
needs: torch 2.2, torchvision 0.17, facenet-pytorch 2.6.0 (pip install --no-deps), Pillow
"""
import json, statistics, sys, time

import torch
from PIL import Image
from facenet_pytorch import MTCNN

iters = int(sys.argv[1])
mtcnn = MTCNN(keep_all=True, device="cpu")
for path in sys.argv[2:]:
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        for _ in range(2):
            boxes, _ = mtcnn.detect(image)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            boxes, _ = mtcnn.detect(image)
            times.append(time.perf_counter() - start)
    faces = 0 if boxes is None else len(boxes)
    print(json.dumps({"image": path, "width": image.size[0], "height": image.size[1], "faces": faces,
                      "ms_per_image": 1e3 * statistics.median(times), "threads": torch.get_num_threads()}))
