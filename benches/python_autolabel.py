#!/usr/bin/env python3
"""The "Python way" baseline for vprompt's autolabel job.

The plain, sequential script a user would write to label a folder of images with a vprompt model folder
and a prompt bank (made by `vprompt bank build`; building it is not part of the per-image work), using
onnxruntime, PIL and pycocotools. Per image, the same work as vprompt's autolabel job (README.md,
"Auto-labeling a folder of images"):
  1. decode to RGB (PIL), letterbox into the model input;
  2. encoder, then decoder (one point: only the generic queries are used);
  3. each generic query takes its best class, score = sigmoid(logit_scale * cos + logit_bias) x its
     predicted IoU; score >= --threshold; box NMS per class at 0.7; at most --max-detections;
  4. masks for the kept queries (mask_embed . mask_feat, upsampled to the input, cropped, resized to the
     image, > 0), dropped when at most 50 pixels; RLE with pycocotools;
  5. one JSON line per image to results.jsonl; coco.json at the end.

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

from python_propagate import Model, frame_logits, input_logits, letterbox, nms, peak_rss_kib

NMS_IOU = 0.7
MIN_AREA = 50


def class_embeddings(bank, n):
    """Per class: the mean of (up to) n exemplar embeddings, L2-normalised."""
    ids, names, embs = [], [], []
    for c in bank["classes"]:
        e = np.array([x["embedding"] for x in c["exemplars"][:n]], dtype=np.float32).mean(0)
        embs.append(e / max(np.linalg.norm(e), 1e-12))
        ids.append(c["id"])
        names.append(c["name"])
    return ids, names, np.stack(embs)


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
    a = ap.parse_args()
    model = Model(a.model, a.threads)
    model.points = np.array([[0.5, 0.5]], dtype=np.float32)
    cls = model.spec["classifier"]
    scale, bias = float(cls["logit_scale"]), float(cls["logit_bias"])
    with open(a.bank) as f:
        ids, names, embs = class_embeddings(json.load(f), 16)
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
            g = model.generic
            cos = q["query_embed"][:g] @ embs.T  # [G, C]
            best = cos.argmax(1)
            prob = 1.0 / (1.0 + np.exp(-(scale * cos[np.arange(g), best] + bias)))
            score = prob * np.clip(q["pred_iou"][:g], 0, 1)
            keep = []
            for c in np.unique(best):
                idx = np.nonzero((best == c) & (score >= a.threshold))[0]
                if idx.size == 0:
                    continue
                b = q["pred_boxes"][idx]
                xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
                keep += [int(idx[i]) for i in nms(xyxy, score[idx], NMS_IOU)]
            keep.sort(key=lambda i: (-score[i], i))
            objects = []
            for i in keep:
                if len(objects) >= a.max_detections:
                    break
                m = frame_logits(input_logits(feats["mask_feat"], q["mask_embed"][i], model.size), w, h, model.size) > 0
                area = int(m.sum())
                if area <= MIN_AREA:
                    continue
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                ys, xs = np.nonzero(m)
                bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                ann = {"id": len(anns) + 1, "image_id": k + 1, "category_id": ids[best[i]], "area": area,
                       "bbox": bbox, "iscrowd": 0, "score": round(float(score[i]), 4),
                       "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}}
                anns.append(ann)
                objects.append({"category": ids[best[i]], "score": ann["score"], "area": area, "bbox": bbox})
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
