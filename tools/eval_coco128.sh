#!/usr/bin/env bash
# COCO128 in-context mask AP through vprompt itself: the fixed split of ../shared/data/README.md
# (exemplars = the 64 pool images, evaluation = the other 64), `vprompt autolabel` from the pool's
# annotations, then `vprompt eval coco` on the categories the bank holds (those occurring in both halves
# score; the others have no ground truth and drop out, as in COCOeval).
# Usage: tools/eval_coco128.sh [MODEL_DIR] [OUT_DIR] [extra autolabel flags...]   (after make build)
set -euo pipefail
MODEL=${1:-models/vprompt-lite0}
OUT=${2:-out/coco128}
shift $(( $# > 2 ? 2 : $# ))
DATA=${DATA:-../shared/data}
BIN=${VPROMPT:-./target/release/vprompt}
python3 tools/coco128/split.py --data "$DATA" --out "$OUT/split" > /dev/null
"$BIN" autolabel --images "$OUT/split/eval-images" --exemplars "$OUT/split/pool.json" \
  --exemplar-images "$DATA/coco128/train2017" --model "$MODEL" --out "$OUT/run" --restart --quiet "$@"
"$BIN" eval coco --pred "$OUT/run/coco.json" --gt "$OUT/split/eval.json" --categories pred --images pred \
  --json "$OUT/ap.json"
