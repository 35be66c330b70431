#!/usr/bin/env bash
# DAVIS-2016 dev-val J&F through vprompt itself: `vprompt propagate` from each sequence's first-frame mask,
# then `vprompt eval davis` over the six fixed dev-val sequences (../shared/data/README.md).
# Usage: [SEQS="boat elephant ..."] tools/eval_davis_devval.sh [MODEL_DIR] [OUT_DIR] [propagate flags, e.g. --target decoder]
# (SEQS: other sequences instead, e.g. training ones to tune on)
# (run from the repository root, after make build)
set -euo pipefail
MODEL=${1:-models/vprompt-lite0}
OUT=${2:-out/davis-devval}
EXTRA=("${@:3}")
DATA=${DAVIS:-../shared/data/davis2016-train-240p}
BIN=${VPROMPT:-./target/release/vprompt}
read -ra SEQS <<< "${SEQS:-bear car-turn dance-jump kite-walk soccerball stroller}"
mkdir -p "$OUT/pred"
start=$(date +%s.%N)
frames=0
for s in "${SEQS[@]}"; do
  "$BIN" propagate --video "$DATA/JPEGImages/$s" --mask "$DATA/Annotations/$s/00000.png" \
    --out "$OUT/$s" --model "$MODEL" --no-video --quiet "${EXTRA[@]}" 2> "$OUT/$s.log" || { cat "$OUT/$s.log"; exit 1; }
  rm -rf "$OUT/pred/$s" && cp -r "$OUT/$s/masks" "$OUT/pred/$s"
  frames=$((frames + $(ls "$OUT/pred/$s" | wc -l)))
done
end=$(date +%s.%N)
"$BIN" eval davis --pred "$OUT/pred" --gt "$DATA/Annotations" --sequences "$(IFS=,; echo "${SEQS[*]}")" --json "$OUT/jf.json"
echo "propagated $frames frames in $(echo "$end - $start" | bc) s (6 runs, model loading included)"
