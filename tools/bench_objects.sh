#!/usr/bin/env bash
# The cost of each extra object in propagate: the demo clip scaled to 854x480 (DAVIS's full size) with
# 1 object (its mask) and with 10 (the mask plus 9 boxes on a 3x3 grid over the frame), default
# settings; prints frames/s and the model and track stages' milliseconds per frame from report.json.
# Usage: tools/bench_objects.sh [OUT_DIR] [propagate flags]   (run from the repository root, after make build)
set -euo pipefail
OUT=${1:-out/bench-objects}
EXTRA=("${@:2}")
BIN=${VPROMPT:-./target/release/vprompt}
W=854
H=480
mkdir -p "$OUT"
VIDEO=$OUT/car-turn-480p.mp4
MASK=$(realpath "$OUT")/car-turn-480p-00000.png
ffmpeg -v error -y -i data/demo/car-turn.mp4 -vf scale=$W:$H -c:v libx264 -crf 18 "$VIDEO"
python3 -c "from PIL import Image; Image.open('data/demo/car-turn-00000.png').resize(($W, $H), Image.NEAREST).save('$MASK')"
{
  echo "objects:"
  echo "  - { id: 1, frame: 0, mask: \"$MASK\" }"
  id=2
  for gy in 0 1 2; do
    for gx in 0 1 2; do
      x0=$((W * gx / 3 + W / 12)); y0=$((H * gy / 3 + H / 12))
      echo "  - { id: $id, frame: 0, box: [$x0, $y0, $((x0 + W / 6)), $((y0 + H / 6))] }"
      id=$((id + 1))
    done
  done
} > "$OUT/ten.yaml"
"$BIN" propagate --video "$VIDEO" --mask "$MASK" --out "$OUT/one" --no-video --quiet "${EXTRA[@]}"
"$BIN" propagate --video "$VIDEO" --prompts "$OUT/ten.yaml" --out "$OUT/ten" --no-video --quiet "${EXTRA[@]}"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| objects | frames | frames/s | model ms/frame | track ms/frame |")
print("|---:|---:|---:|---:|---:|")
for name, n in (("one", 1), ("ten", 10)):
    r = json.load(open(f"{out}/{name}/report.json"))
    st = {s["stage"]: s for s in r["stages"]}
    ms = lambda k: 1000 * st[k]["busy_s"] / max(st[k]["items"], 1)
    print(f"| {n} | {r['frames_written']} | {r['fps']:.2f} | {ms('model'):.1f} | {ms('track'):.1f} |")
PY
