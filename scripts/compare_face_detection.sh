#!/usr/bin/env bash
# Face detection speed on this machine's CPU, in one run: adcorre's MTCNN (`adcorre bench
# --detect`, flex) vs facenet-pytorch's MTCNN (scripts/facenet_detect_bench.py), on the
# fixture's 1280x720 group photo and a 640x480 image made from it, ROUNDS alternating rounds.
# Prints each side's median ms per image, the ratio ours / facenet-pytorch (lower is better)
# and the instruction set (AVX-512 or not).
#
# Needs: a Python with torch 2.2, torchvision 0.17, facenet-pytorch 2.6.0 (pip install
# --no-deps), Pillow; PYTHON=path/to/python (default python3). CI does not run this.
# Usage: [ROUNDS=3] [PYTHON=venv/bin/python] scripts/compare_face_detection.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
group=../shared/fixtures/mtcnn/group.jpg
small=$(mktemp --suffix=.png)
trap 'rm -f "$small"' EXIT
"$python" -c "from PIL import Image; Image.open('$group').convert('RGB').resize((640, 480), Image.BILINEAR).save('$small')"

cargo build --release --bin adcorre >/dev/null
if grep -q avx512f /proc/cpuinfo; then isa="AVX-512"; else isa="AVX2 (no AVX-512)"; fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $isa"
results=$(mktemp)
for round in $(seq "$rounds"); do
    for image in "$group" "$small"; do
        target/release/adcorre bench --detect "$image" --iters 10 --json | sed "s/^/ours $round /" >>"$results"
        "$python" scripts/facenet_detect_bench.py 10 "$image" | sed "s/^/peer $round /" >>"$results"
    done
done
"$python" - "$results" <<'PY'
import json, statistics, sys
rows = [line.split(" ", 2) for line in open(sys.argv[1])]
by = {}
for side, _, text in rows:
    entry = json.loads(text)
    key = (f"{entry['width']}x{entry['height']}", entry["faces"])
    by.setdefault(key, {}).setdefault(side, []).append(entry["ms_per_image"])
for (size, faces), sides in by.items():
    ours, peer = statistics.median(sides["ours"]), statistics.median(sides["peer"])
    print(f"{size} ({faces} faces): adcorre {ours:.1f} ms, facenet-pytorch {peer:.1f} ms, "
          f"ratio {ours / peer:.2f} (medians of {len(sides['ours'])} rounds; rounds: "
          f"ours {', '.join(f'{v:.0f}' for v in sides['ours'])}; peer {', '.join(f'{v:.0f}' for v in sides['peer'])})")
PY
rm -f "$results"
