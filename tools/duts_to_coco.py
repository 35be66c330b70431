#!/usr/bin/env python3
"""Writes the DUTS dev-val split as a COCO instances JSON, so that `vprompt eval prompts` evaluates it:

    PYTHONPATH=.deps/python python3 tools/duts_to_coco.py [--data ../shared/data/duts-tr-256] --out FILE

One image per stem of dev-val.txt (images/<stem>.jpg) with one instance: the whole mask
(masks/<stem>.png, 255 = object) as compressed RLE, its bbox and area from the mask, category 1
"salient", iscrowd 0. Stems whose mask is empty are left out (and counted on stderr). Then:

    vprompt eval prompts --gt FILE --images ../shared/data/duts-tr-256/images --prompt box
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "duts-tr-256"))
    ap.add_argument("--split", default="dev-val.txt", help="file of stems in --data (default %(default)s)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(os.path.join(a.data, a.split)) as f:
        stems = [s.strip() for s in f if s.strip()]
    images, annotations, empty = [], [], 0
    for stem in stems:
        image_path = os.path.join(a.data, "images", stem + ".jpg")
        mask_path = os.path.join(a.data, "masks", stem + ".png")
        with Image.open(image_path) as im:
            width, height = im.size
        with Image.open(mask_path) as m:
            mask = np.array(m.convert("L")) >= 128
        if mask.shape != (height, width):
            sys.exit(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
        if not mask.any():
            empty += 1
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": stem + ".jpg", "width": width, "height": height})
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "area": float(mask_utils.area(rle)),
                "bbox": bbox,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            }
        )
    doc = {
        "info": {"description": f"DUTS-TR {a.split} (256 px), one instance per image: the whole mask"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "salient"}],
    }
    with open(a.out, "w") as f:
        json.dump(doc, f)
    print(f"{a.out}: {len(images)} images, {len(annotations)} instances ({empty} empty masks left out)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
