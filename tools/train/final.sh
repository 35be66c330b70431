#!/bin/bash
# export + evaluate the final checkpoint (run after train.py has finished)
set -e
cd "$(dirname "$0")"
mkdir -p runs/eval checkpoints
cp runs/main/last.pt checkpoints/last.pt
python3 export.py --ckpt checkpoints/last.pt --out ../../models/vprompt-lite0 --size 320 2>&1 | grep -vE "^\s*$|UserWarning|rename_mapping" | tee runs/eval/export.out
python3 eval_davis.py --model ../../models/vprompt-lite0 --iou-thr 0.5 --mem-thr 0.7 0.5 0.9 --json runs/eval/davis.json | tee runs/eval/davis.out
python3 eval_coco.py --model ../../models/vprompt-lite0 2>&1 | tee runs/eval/coco.out
python3 eval_coco.py --model ../../models/vprompt-lite0 --with-iou 2>&1 | tail -1 | tee runs/eval/coco_iou.out
