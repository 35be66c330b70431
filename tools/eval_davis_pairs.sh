#!/usr/bin/env bash
# Cross-image referring without propagation, on the DAVIS-2016 dev-val sequences: frame 0's mask is the
# prompt and the middle frame the only target (a 2-frame folder per sequence), so nothing is carried
# from frame to frame but the prompt. Prints the IoU of each middle frame and their mean.
# With REF=image, frame 0 is a reference image outside the source (the prompt file's `image:`) and the
# source holds the middle frame alone.
# Usage: [REF=image] tools/eval_davis_pairs.sh [MODEL_DIR] [OUT_DIR] [propagate flags, e.g. --target decoder]
# (run from the repository root, after make build)
set -euo pipefail
MODEL=${1:-models/vprompt-lite0}
OUT=${2:-out/davis-pairs}
EXTRA=("${@:3}")
DATA=${DAVIS:-../shared/data/davis2016-train-240p}
BIN=${VPROMPT:-./target/release/vprompt}
SEQS=(bear car-turn dance-jump kite-walk soccerball stroller)
for s in "${SEQS[@]}"; do
  n=$(ls "$DATA/JPEGImages/$s" | wc -l)
  mid=$(printf "%05d" $((n / 2)))
  rm -rf "$OUT/$s" && mkdir -p "$OUT/$s/frames"
  cp "$DATA/Annotations/$s/$mid.png" "$OUT/$s/gt.png"
  if [ "${REF:-}" = image ]; then
    cp "$DATA/JPEGImages/$s/00000.jpg" "$OUT/$s/reference.jpg"
    cp "$DATA/JPEGImages/$s/$mid.jpg" "$OUT/$s/frames/00001.jpg"
    printf 'objects:\n  - { id: 1, image: reference.jpg, mask: "%s" }\n' \
      "$(realpath "$DATA/Annotations/$s/00000.png")" > "$OUT/$s/prompts.yaml"
    PROMPT=(--prompts "$OUT/$s/prompts.yaml")
  else
    cp "$DATA/JPEGImages/$s/00000.jpg" "$OUT/$s/frames/00000.jpg"
    cp "$DATA/JPEGImages/$s/$mid.jpg" "$OUT/$s/frames/00001.jpg"
    PROMPT=(--mask "$DATA/Annotations/$s/00000.png")
  fi
  "$BIN" propagate --video "$OUT/$s/frames" "${PROMPT[@]}" \
    --out "$OUT/$s/run" --model "$MODEL" --no-video --quiet "${EXTRA[@]}" 2> "$OUT/$s.log" \
    || { cat "$OUT/$s.log"; exit 1; }
done
python3 - "$OUT" "${SEQS[@]}" <<'PY'
import sys
import numpy as np
from PIL import Image
out, seqs = sys.argv[1], sys.argv[2:]
ious = []
for s in seqs:
    gt = np.asarray(Image.open(f"{out}/{s}/gt.png")) > 0
    pred = np.asarray(Image.open(f"{out}/{s}/run/masks/00001.png")) == 1
    union = (gt | pred).sum()
    ious.append((gt & pred).sum() / union if union else 1.0)
    print(f"{s:12s} IoU {ious[-1]:.4f}")
print(f"mean IoU {np.mean(ious):.4f} over {len(seqs)} middle frames")
PY
