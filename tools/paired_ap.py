#!/usr/bin/env python3
"""Two models' COCO128 in-context mask AP compared with a paired bootstrap over the evaluation images.

    python3 tools/paired_ap.py out/eval-run1/coco128-ap out/eval-run8/coco128-ap [--n 300]

Each argument is an OUT_DIR of tools/eval_coco128.sh (split/eval.json, run/coco.json). A replicate draws the 64
evaluation images with replacement (the same draw for both models), writes the drawn ground truth and each model's
predictions with every copy of an image renamed apart, and scores both with `vprompt eval coco` (the protocol the
reports use). Prints AP and AP50 of each model on all images, the mean difference over the replicates and its 95%
interval: an AP of 0.015 over 64 images moves a lot with which images are drawn, and this says how much.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def load(d):
    gt = json.load(open(os.path.join(d, "split", "eval.json")))
    pred = json.load(open(os.path.join(d, "run", "coco.json")))
    return gt, pred


def indexed(doc):
    """`doc` with its images by file name and its annotations by image id, made once per document."""
    per_image = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    return doc, {im["file_name"]: im for im in doc["images"]}, per_image


def drawn(ix, files):
    """The indexed document restricted to the drawn `files` (with repeats): copy k of an image is `name#k`, new ids
    throughout."""
    doc, by_file, per_image = ix
    images, anns = [], []
    for k, f in enumerate(files):
        images.append(dict(by_file[f], id=k + 1, file_name=f"{f}#{k}"))
        for a in per_image.get(by_file[f]["id"], []):
            anns.append(dict(a, id=len(anns) + 1, image_id=k + 1))
    return dict(doc, images=images, annotations=anns)


def score(binary, gt, pred, tmp, tag):
    g, p, out = (os.path.join(tmp, f"{tag}-{n}.json") for n in ("gt", "pred", "ap"))
    json.dump(gt, open(g, "w"))
    json.dump(pred, open(p, "w"))
    r = subprocess.run([binary, "eval", "coco", "--pred", p, "--gt", g, "--categories", "pred", "--images", "pred",
                        "--json", out], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"vprompt eval coco failed on {tag}: {r.stderr.strip()}")
    ap = json.load(open(out))
    return ap["ap"], ap["ap50"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="OUT_DIR of tools/eval_coco128.sh for model A")
    ap.add_argument("b", help="the same for model B")
    ap.add_argument("--n", type=int, default=300, help="bootstrap replicates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default=os.environ.get("VPROMPT", "./target/release/vprompt"))
    args = ap.parse_args()
    (gt, pa), (gt_b, pb) = load(args.a), load(args.b)
    files = sorted(im["file_name"] for im in gt["images"])
    if files != sorted(im["file_name"] for im in gt_b["images"]):
        sys.exit("the two directories evaluate different images")
    ix_gt, ix_a, ix_b = indexed(gt), indexed(pa), indexed(pb)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        full = [score(args.bin, gt, p, tmp, t) for p, t in ((pa, "a"), (pb, "b"))]
        diffs = []
        for i in range(args.n):
            draw = [files[j] for j in rng.integers(0, len(files), len(files))]
            g = drawn(ix_gt, draw)
            sa = score(args.bin, g, drawn(ix_a, draw), tmp, "a")
            sb = score(args.bin, g, drawn(ix_b, draw), tmp, "b")
            diffs.append((sb[0] - sa[0], sb[1] - sa[1]))
    d = np.array(diffs)
    print(f"A {args.a}: AP {full[0][0]:.4f}, AP50 {full[0][1]:.4f}")
    print(f"B {args.b}: AP {full[1][0]:.4f}, AP50 {full[1][1]:.4f}")
    for c, name in ((0, "AP"), (1, "AP50")):
        lo, hi = np.percentile(d[:, c], [2.5, 97.5])
        print(f"B - A {name}: {full[1][c] - full[0][c]:+.4f}, 95% paired bootstrap over the {len(files)} images "
              f"[{lo:+.4f}, {hi:+.4f}] ({args.n} replicates; B lower in {(d[:, c] < 0).mean():.0%})")


if __name__ == "__main__":
    main()
