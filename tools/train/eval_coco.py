"""COCO128 in-context generic segmentation mask AP (ONNX Runtime).

Exemplars: instances of the pool half (64 images whose names sort first); per class up to N=16 are drawn
(fixed seed), each encoded as a mask prompt on its own image, averaged and re-normalised. Evaluation:
the other 64 images, categories occurring in both halves. Each generic query picks its best class,
score = sigmoid(logit_scale * cos + logit_bias) (optionally x predicted IoU); top-100 per image.

python3 eval_coco.py --model ../../models/vprompt-lite0
"""
import argparse
import contextlib
import io
import json
import os
import random

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval_davis import Model
from vp.data import DATA, coco_split, load_rgb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="../../models/vprompt-lite0")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-iou", action="store_true", help="score = class prob x predicted IoU")
    ap.add_argument("--all-queries", action="store_true", help="score generic and interactive queries")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = Model(args.model)
    root = os.path.join(DATA, "coco128")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    pool, evals = coco_split()
    by_name = {im["file_name"]: im for im in coco.imgs.values()}
    pool_ids = [by_name[f]["id"] for f in pool]
    eval_ids = [by_name[f]["id"] for f in evals]
    cats_pool = {a["category_id"] for i in pool_ids for a in coco.imgToAnns[i] if not a.get("iscrowd", 0)}
    cats_eval = {a["category_id"] for i in eval_ids for a in coco.imgToAnns[i] if not a.get("iscrowd", 0)}
    cats = sorted(cats_pool & cats_eval)
    rng = random.Random(args.seed)
    # ---- class embeddings from the pool
    ex = {c: [] for c in cats}
    for i in pool_ids:
        for a in coco.imgToAnns[i]:
            if a["category_id"] in ex and not a.get("iscrowd", 0) and a["area"] > 16:
                ex[a["category_id"]].append(a)
    drawn = {c: rng.sample(v, min(args.n, len(v))) for c, v in ex.items()}
    need = {}
    for c, anns in drawn.items():
        for a in anns:
            need.setdefault(a["image_id"], []).append((c, a))
    embs = {c: [] for c in cats}
    for iid, lst in need.items():
        img = load_rgb(os.path.join(root, "train2017", coco.imgs[iid]["file_name"]))
        feats, (nh, nw) = m.encode(img)
        for c, a in lst:
            embs[c].append(m.prompt(feats, m.mask_in(coco.annToMask(a), nh, nw)))
    C = np.stack([np.mean(embs[c], 0) for c in cats])
    C = C / np.linalg.norm(C, axis=1, keepdims=True)
    scale, bias = m.cfg["classifier"]["logit_scale"], m.cfg["classifier"]["logit_bias"]
    # ---- detect on the evaluation half
    dets = []
    for iid in eval_ids:
        info = coco.imgs[iid]
        img = load_rgb(os.path.join(root, "train2017", info["file_name"]))
        H, W = img.shape[1:]
        feats, (nh, nw) = m.encode(img)
        iou, boxes, emb, me = m.decode(feats)
        qs = np.arange(len(iou)) if args.all_queries else np.arange(m.G)
        z = scale * emb[qs] @ C.T + bias
        p = 1 / (1 + np.exp(-z))
        best = p.argmax(1)
        sc = p[np.arange(len(qs)), best]
        if args.with_iou:
            sc = sc * iou[qs]
        top = np.argsort(-sc)[:100]
        ms = m.masks(me, feats["mask_feat"], qs[top], nh, nw, H, W)
        for j, q in enumerate(top):
            if ms[j].sum() == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray(ms[j].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            dets.append(dict(image_id=iid, category_id=int(cats[best[q]]), segmentation=rle, score=float(sc[q])))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(dets)
    ev = COCOeval(coco, dt, "segm")
    ev.params.imgIds = eval_ids
    ev.params.catIds = cats
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    print(json.dumps(dict(mask_AP=round(float(ev.stats[0]), 4), AP50=round(float(ev.stats[1]), 4), categories=len(cats),
                          eval_images=len(eval_ids), detections=len(dets), with_iou=args.with_iou,
                          all_queries=args.all_queries)))


if __name__ == "__main__":
    main()
