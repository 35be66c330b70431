#!/usr/bin/env bash
# Every dev metric of a model through vprompt itself, as one table: prompted mIoU (box, one click) on the
# COCO128 evaluation half and on DUTS-TR dev-val, DAVIS-2016 dev-val J&F, COCO128 in-context mask AP.
# Usage: tools/eval_model.sh [MODEL_DIR] [OUT_DIR]   (run from the repository root, after make build)
# The fixed splits are those of ../shared/data/README.md; nothing here trains or tunes. Every prompted
# instance's score is kept beside the reports (`OUT/coco128-click.jsonl`, ...: `eval prompts --instances`), so
# that two models can be compared instance by instance (tools/paired.py).
set -euo pipefail
MODEL=${1:-models/vprompt-lite0}
OUT=${2:-out/eval-model}
DATA=${DATA:-../shared/data}
BIN=${VPROMPT:-./target/release/vprompt}
mkdir -p "$OUT"
[ -f "$OUT/duts-devval.json" ] || PYTHONPATH=.deps/python python3 tools/duts_to_coco.py \
  --data "$DATA/duts-tr-256" --out "$OUT/duts-devval.json" 2> /dev/null
for p in box click; do
  "$BIN" eval prompts --gt "$DATA/coco128/annotations/instances_train2017.json" --images "$DATA/coco128/train2017" \
    --split eval --prompt "$p" --model "$MODEL" --json --instances "$OUT/coco128-$p.jsonl" > "$OUT/coco128-$p.json"
  "$BIN" eval prompts --gt "$OUT/duts-devval.json" --images "$DATA/duts-tr-256/images" \
    --prompt "$p" --model "$MODEL" --json --instances "$OUT/duts-$p.jsonl" > "$OUT/duts-$p.json"
done
DAVIS="$DATA/davis2016-train-240p" tools/eval_davis_devval.sh "$MODEL" "$OUT/davis" > "$OUT/davis.txt"
DATA="$DATA" tools/eval_coco128.sh "$MODEL" "$OUT/coco128-ap" > "$OUT/coco128-ap.txt"
python3 - "$OUT" "$MODEL" << 'EOF'
import json, sys
out, model = sys.argv[1:]
def bucket(name):
    return json.load(open(f"{out}/{name}.json"))["buckets"][-1]
print(f"model {model}")
print("| metric | model | baseline |")
print("|---|---:|---:|")
for data, label in (("coco128", "COCO128 eval half"), ("duts", "DUTS-TR dev-val")):
    for p in ("box", "click"):
        b = bucket(f"{data}-{p}")
        print(f"| {label}, {p} mIoU ({b['instances']} instances) | {b['miou_model']:.4f} | filled box {b['miou_box']:.4f} |")
jf = json.load(open(f"{out}/davis/jf.json"))
print(f"| DAVIS-2016 dev-val J&F (J, F) | {jf['jf_mean']:.4f} ({jf['j_mean']:.4f}, {jf['f_mean']:.4f}) | |")
ap = json.load(open(f"{out}/coco128-ap/ap.json"))
print(f"| COCO128 in-context mask AP (AP50) | {ap['ap']:.4f} ({ap['ap50']:.4f}) | |")
EOF
