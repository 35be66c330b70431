#!/usr/bin/env python3
"""Cross-check vprompt's COCO segmentations with pycocotools (an independent RLE implementation).

    coco_rle.py --coco <instances.json> --masks <dir>      # decode every annotation, compare with <dir>/<id>.png
    coco_rle.py --coco <results.json> --load-res <gt.json>   # check COCO(gt).loadRes(results) works
    (both may be given together)

`--coco` is a COCO dataset file (a dict with "annotations", and "images" for sizes) or a results file
(a list of {image_id, category_id, segmentation, score}). An annotation without an "id" gets the id that
pycocotools' loadRes gives it: its 1-based position in the list.

`segmentation` may be RLE with compressed (string) counts, RLE with uncompressed (list) counts, or
polygons; the last two go through `mask.frPyObjects`. The PNGs may be 0/255 or 0/1 (any non-zero is in).

Prints JSON {"annotations": n, "mismatched_pixels": k, ...} and exits 1 when any pixel differs, a PNG is
missing or has another size, or loadRes fails.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as maskUtils


def load_annotations(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):
        return data, {}, data
    sizes = {im["id"]: (im["height"], im["width"]) for im in data.get("images", [])}
    return data.get("annotations", []), sizes, data


def decode(segm, hw):
    """Binary HxW uint8 mask of one `segmentation`."""
    if isinstance(segm, dict):
        h, w = segm["size"]
        if isinstance(segm["counts"], list):  # uncompressed RLE
            rle = maskUtils.frPyObjects(segm, h, w)
        else:  # compressed RLE: counts is a string
            counts = segm["counts"]
            rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:  # polygons
        if hw is None:
            raise ValueError("polygon segmentation but no image size")
        rle = maskUtils.merge(maskUtils.frPyObjects(segm, hw[0], hw[1]))
    return maskUtils.decode(rle)


def check_masks(anns, sizes, mask_dir):
    out = {"annotations": len(anns), "mismatched_pixels": 0, "missing_png": 0, "size_mismatch": 0, "bad_annotations": 0}
    worst = []
    for i, ann in enumerate(anns):
        aid = ann.get("id", i + 1)
        try:
            ref = decode(ann["segmentation"], sizes.get(ann.get("image_id"))).astype(bool)
        except Exception as e:  # noqa: BLE001
            out["bad_annotations"] += 1
            worst.append({"id": aid, "error": f"cannot decode segmentation: {e}"})
            continue
        png = os.path.join(mask_dir, f"{aid}.png")
        if not os.path.exists(png):
            out["missing_png"] += 1
            worst.append({"id": aid, "error": "missing png"})
            continue
        got = np.array(Image.open(png))
        if got.ndim == 3:
            got = got[..., 0]
        got = got > 0
        if got.shape != ref.shape:
            out["size_mismatch"] += 1
            worst.append({"id": aid, "error": f"png {got.shape[::-1]} vs rle {ref.shape[::-1]} (w,h)"})
            continue
        k = int((got != ref).sum())
        if k:
            out["mismatched_pixels"] += k
            worst.append({"id": aid, "mismatched_pixels": k})
    if worst:
        out["first_problems"] = worst[:10]
    ok = not (out["mismatched_pixels"] or out["missing_png"] or out["size_mismatch"] or out["bad_annotations"])
    return out, ok


def check_load_res(gt_path, data):
    from pycocotools.coco import COCO

    import contextlib
    import io

    res = data if isinstance(data, list) else data.get("annotations", [])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(gt_path)
            if not res:
                return {"load_res": "ok", "results": 0}, True
            dt = gt.loadRes(res)
        n = len(dt.getAnnIds())
        return {"load_res": "ok", "results": n}, True
    except Exception as e:  # noqa: BLE001
        return {"load_res": f"failed: {type(e).__name__}: {e}"}, False


def main():
    ap = argparse.ArgumentParser(description="Cross-check COCO RLE segmentations with pycocotools.")
    ap.add_argument("--coco", required=True, help="instances.json (or a results list) written by vprompt")
    ap.add_argument("--masks", help="folder of <annotation id>.png masks to compare with")
    ap.add_argument("--load-res", metavar="GT_JSON", help="check COCO(GT_JSON).loadRes(--coco) works")
    a = ap.parse_args()
    if not a.masks and not a.load_res:
        ap.error("give --masks and/or --load-res")
    anns, sizes, data = load_annotations(a.coco)
    report, ok = {"annotations": len(anns)}, True
    if a.masks:
        r, k = check_masks(anns, sizes, a.masks)
        report.update(r)
        ok &= k
    if a.load_res:
        r, k = check_load_res(a.load_res, data)
        report.update(r)
        ok &= k
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
