#!/usr/bin/env python3
"""Mask AP of a COCO results file with pycocotools' COCOeval (iouType 'segm').

    coco_eval.py --pred <results.json> --gt <instances.json> [--cat-ids 1,2,...] [--img-ids 3,4,...]

`--pred` is a COCO results list ({image_id, category_id, segmentation, score}) or a dict holding one
under "annotations". Prints JSON {"AP": .., "AP50": .., "AP75": ..} (COCOeval's stats[0..2]); the usual
COCOeval summary goes to stderr. An empty results list scores 0 (pycocotools cannot load one).
By default every GT image is evaluated (COCOeval's default; images without predictions count as misses);
--img-ids restricts it, e.g. to the evaluation half of a split.
"""

import argparse
import contextlib
import json
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def ids(text):
    return [int(t) for t in text.split(",") if t.strip()] if text else None


def main():
    ap = argparse.ArgumentParser(description="COCO mask AP with pycocotools.")
    ap.add_argument("--pred", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--cat-ids", help="comma-separated category ids to evaluate (default: all)")
    ap.add_argument("--img-ids", help="comma-separated image ids to evaluate")
    a = ap.parse_args()

    with open(a.pred) as f:
        pred = json.load(f)
    if isinstance(pred, dict):
        pred = pred.get("annotations", [])
    with contextlib.redirect_stdout(sys.stderr):
        gt = COCO(a.gt)
        if not pred:
            print(json.dumps({"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "results": 0}), file=sys.__stdout__)
            return 0
        dt = gt.loadRes(pred)
        ev = COCOeval(gt, dt, iouType="segm")
        if a.img_ids:
            ev.params.imgIds = ids(a.img_ids)
        if a.cat_ids:
            ev.params.catIds = ids(a.cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    print(json.dumps({"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "results": len(pred),
                      "images": len(ev.params.imgIds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
