#!/usr/bin/env python3
"""Writes the fixed COCO128 split of ../shared/data/README.md as files vprompt reads:

    split.py [--data ../shared/data] --out DIR

DIR/pool.json     COCO instances of the exemplar pool (the 64 images whose names sort first)
DIR/eval.json     COCO instances of the evaluation half (the other 64)
DIR/eval-images/  links to the 64 evaluation images
Only the standard library is used; the JSON files keep COCO's ids, so AP is computed against the same ids.
"""
import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "..", "shared", "data"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    root = os.path.join(a.data, "coco128")
    with open(os.path.join(root, "annotations", "instances_train2017.json")) as f:
        doc = json.load(f)
    names = sorted(im["file_name"] for im in doc["images"])
    pool = set(names[:64])
    os.makedirs(os.path.join(a.out, "eval-images"), exist_ok=True)
    for half, keep in (("pool", lambda n: n in pool), ("eval", lambda n: n not in pool)):
        images = [im for im in doc["images"] if keep(im["file_name"])]
        ids = {im["id"] for im in images}
        sub = {
            "info": doc.get("info", {}),
            "licenses": doc.get("licenses", []),
            "images": images,
            "annotations": [x for x in doc["annotations"] if x["image_id"] in ids],
            "categories": doc["categories"],
        }
        with open(os.path.join(a.out, f"{half}.json"), "w") as f:
            json.dump(sub, f)
        print(f"{half}: {len(images)} images, {len(sub['annotations'])} annotations")
    for n in names[64:]:
        link = os.path.join(a.out, "eval-images", n)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(root, "train2017", n)), link)


if __name__ == "__main__":
    main()
