#!/usr/bin/env bash
# Auto-labeling speed on COCO128: the bank build for the pool half's 542 exemplars, then `vprompt autolabel`
# over the 64 evaluation images with a given bank, once per labeler setting (default settings first);
# prints a table of bank build seconds and images/s with the model, label and sinks stages' images per
# busy second from report.json. Usage: tools/bench_autolabel.sh [OUT_DIR] ["FLAGS" ...]: one more row per
# quoted group of autolabel flags, e.g. tools/bench_autolabel.sh out/bench-al "--workers 2" "--grid 20"
# (run from the repository root, after make build)
set -euo pipefail
OUT=${1:-out/bench-autolabel}
shift $(( $# > 0 ? 1 : 0 ))
DATA=${DATA:-../shared/data}
BIN=${VPROMPT:-./target/release/vprompt}
mkdir -p "$OUT"
python3 tools/coco128/split.py --data "$DATA" --out "$OUT/split" > /dev/null
t0=$(date +%s.%N)
"$BIN" bank build --exemplars "$OUT/split/pool.json" --exemplar-images "$DATA/coco128/train2017" \
  --out "$OUT/bank.json" > /dev/null
t1=$(date +%s.%N)
echo "bank build, 542 exemplars on 64 images: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
echo
echo "| settings | images/s | model img/busy s | label img/busy s | sinks img/busy s | detections |"
echo "|---|---:|---:|---:|---:|---:|"
for flags in "" "$@"; do
  # shellcheck disable=SC2086
  "$BIN" autolabel --images "$OUT/split/eval-images" --bank "$OUT/bank.json" --out "$OUT/run" \
    --restart --quiet $flags
  python3 - "$OUT/run" "${flags:-defaults}" << 'PY'
import json, sys
run, label = sys.argv[1:]
r = json.load(open(f"{run}/report.json"))
st = {s["stage"]: s["items_per_busy_s"] for s in r["stages"]}
n = len(json.load(open(f"{run}/coco.json"))["annotations"])
print(f"| {label} | {r['fps']:.2f} | {st.get('model', 0):.1f} | {st.get('track', 0):.1f} | {st.get('sinks', 0):.1f} | {n} |")
PY
done
