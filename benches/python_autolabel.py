#!/usr/bin/env python3
"""The "Python way" baseline for vprompt's autolabel job.

The plain, sequential script a user would write to label a folder of images with a vprompt model folder
and a prompt bank (made by `vprompt bank build`; building it is not part of the per-image work), using
onnxruntime, PIL and pycocotools. Per image, the same work as vprompt's autolabel job with its default `proposals` labeler (README.md,
"Auto-labeling a folder of images"; src/decode/generic.rs and proposals.rs):
  1. decode to RGB (PIL), letterbox into the model input;
  2. encoder, then decoder on a --grid x --grid point grid (the generic queries and two levels per point);
  3. proposals: queries with predicted IoU >= 0.3, best first, as masks on the stride-4 grid (padding
     cells off), a mask overlapping a kept one by IoU > 0.7 dropped, at most 100;
  4. each proposal's descriptor (the model's `classifier.descriptor` maps averaged under its grid mask,
     each map's part and the whole L2-normalised) against the classes' prototypes (the mean exemplar
     descriptor): softmax over 10 x cos with a "none of these" entry at 10 x 0.5; its 3 most probable
     classes, score = probability x predicted IoU, kept when >= --threshold; mask NMS per class at 0.5;
  5. best score first, at most --max-detections: masks for the kept queries (mask_embed . mask_feat,
     upsampled to the input, cropped, resized to the image, > 0), dropped when at most 50 pixels; RLE with
     pycocotools;
  6. one JSON line per image to results.jsonl; coco.json at the end.

Usage:
  python3 benches/python_autolabel.py --model models/vprompt-lite0 --bank bank.json \
      --images DIR --out /tmp/pyout [--limit N] [--threads 2]

At the end one JSON line is printed: {"images", "seconds", "fps", "peak_rss_mib"}.
"""

import argparse
import json
import os
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from python_propagate import (Model, frame_logits, grid_points, input_logits, letterbox, letterbox_size,
                              peak_rss_kib)

MIN_IOU = 0.3  # least predicted IoU of a proposal
PROPOSAL_NMS = 0.7  # mask IoU above which a proposal repeats a better one
MAX_PROPOSALS = 100
TEMPERATURE = 10.0
BACKGROUND = 0.5  # the "none of these classes" similarity
CLASSES_PER_PROPOSAL = 3
CLASS_NMS = 0.5  # mask IoU above which a detection repeats a better one of its class
MIN_AREA = 50


def unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def prototypes(bank):
    """Per class: the mean of all its exemplars' descriptors, L2-normalised."""
    ids, names, protos = [], [], []
    for c in bank["classes"]:
        d = np.array([x["descriptor"] for x in c["exemplars"]], dtype=np.float32).sum(0)
        protos.append(unit(d))
        ids.append(c["id"])
        names.append(c["name"])
    return ids, names, np.stack(protos)


def mask_ious(m, kept):
    """IoU of one flat boolean mask with each row of a stack of them."""
    inter = (kept & m).sum(1)
    union = kept.sum(1) + m.sum() - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def proposals(q, mask_feat, w, h, size):
    """(query, grid mask) pairs, best predicted IoU first, deduplicated by mask IoU."""
    iou = q["pred_iou"]
    order = sorted((i for i in range(len(iou)) if np.isfinite(iou[i]) and iou[i] >= MIN_IOU),
                   key=lambda i: (-iou[i], i))
    if not order:
        return []
    _, m, gh, gw = mask_feat.shape
    sw, sh = letterbox_size(w, h, size)
    vw, vh = min(-(-sw * gw // size), gw), min(-(-sh * gh // size), gh)
    cells = (q["mask_embed"][order] @ mask_feat[0].reshape(m, gh * gw) > 0).reshape(-1, gh, gw)
    cells[:, vh:, :] = False
    cells[:, :, vw:] = False
    cells = cells.reshape(len(order), -1)
    kept, stack = [], np.zeros((0, gh * gw), dtype=bool)
    for i, c in zip(order, cells):
        if len(kept) >= MAX_PROPOSALS:
            break
        if c.any() and (stack.shape[0] == 0 or mask_ious(c, stack).max() <= PROPOSAL_NMS):
            kept.append((i, c.reshape(gh, gw)))
            stack = np.vstack([stack, c])
    return kept


def describe(maps, cells):
    """A grid mask's descriptor: each map averaged over the cells under the mask (a grid cell counts
    in the map cell under its centre), each part L2-normalised, then the whole."""
    side = cells.shape[0]
    ys, xs = np.nonzero(cells)
    parts = []
    for t in maps:
        h, w = t.shape[2:]
        my = np.minimum((ys * h + h // 2) // side, h - 1)
        mx = np.minimum((xs * w + w // 2) // side, w - 1)
        parts.append(unit(t[0][:, my, mx].mean(1)))
    return unit(np.concatenate(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--max-detections", type=int, default=100)
    ap.add_argument("--grid", type=int, default=12)
    a = ap.parse_args()
    model = Model(a.model, a.threads)
    model.points = grid_points(a.grid)
    with open(a.bank) as f:
        ids, names, protos = prototypes(json.load(f))
    descriptor = model.spec["classifier"].get("descriptor") or []
    files = sorted(f for f in os.listdir(a.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if a.limit:
        files = files[: a.limit]
    os.makedirs(a.out, exist_ok=True)
    images, anns = [], []
    t0 = time.time()
    with open(os.path.join(a.out, "results.jsonl"), "w") as jl:
        for k, name in enumerate(files):
            rgb = np.asarray(Image.open(os.path.join(a.images, name)).convert("RGB"))
            h, w = rgb.shape[:2]
            feats = model.encode(letterbox(rgb, model))
            q = model.decode(feats)
            mask_feat = feats["mask_feat"]
            maps = [feats[n] for n in descriptor] or [
                t for n, t in feats.items() if n != "mask_feat" and t.ndim == 4]
            props = proposals(q, mask_feat, w, h, model.size)
            picks = []
            for k, (i, cells) in enumerate(props):
                logits = TEMPERATURE * np.append(protos @ describe(maps, cells), BACKGROUND)
                e = np.exp(logits - logits.max())
                prob = (e / e.sum())[:-1]
                for c in sorted(range(len(prob)), key=lambda c: (-prob[c], c))[:CLASSES_PER_PROPOSAL]:
                    score = float(prob[c]) * float(np.clip(q["pred_iou"][i], 0, 1))
                    if score >= a.threshold and np.isfinite(score):
                        picks.append((score, k, c))
            picks.sort(key=lambda p: (-p[0], p[1]))
            keep = []
            for score, k, c in picks:
                same = [props[kk][1].ravel() for _, kk, kc in keep if kc == c]
                if not same or mask_ious(props[k][1].ravel(), np.stack(same)).max() <= CLASS_NMS:
                    keep.append((score, k, c))
            objects = []
            for score, k, c in keep:
                if len(objects) >= a.max_detections:
                    break
                i = props[k][0]
                m = frame_logits(input_logits(feats["mask_feat"], q["mask_embed"][i], model.size), w, h, model.size) > 0
                area = int(m.sum())
                if area <= MIN_AREA:
                    continue
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                ys, xs = np.nonzero(m)
                bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                ann = {"id": len(anns) + 1, "image_id": k + 1, "category_id": ids[c], "area": area,
                       "bbox": bbox, "iscrowd": 0, "score": round(score, 4),
                       "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}}
                anns.append(ann)
                objects.append({"category": ids[c], "score": ann["score"], "area": area, "bbox": bbox})
            images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
            jl.write(json.dumps({"frame": k, "name": name, "objects": objects}) + "\n")
    with open(os.path.join(a.out, "coco.json"), "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": i, "name": n} for i, n in zip(ids, names)]}, f)
    dt = time.time() - t0
    print(json.dumps({"images": len(files), "seconds": round(dt, 3), "fps": round(len(files) / dt, 3),
                      "peak_rss_mib": round(peak_rss_kib() / 1024, 1)}))


if __name__ == "__main__":
    main()
